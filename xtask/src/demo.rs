//! The main job: a scratch tgtd on 127.0.0.1, a workload that causes aborts,
//! and tgt-trace watching it.

pub fn run(_seconds: u64) -> anyhow::Result<()> {
    anyhow::bail!("the demo is being written")
}
