//! `tgt-trace man`, hidden: the manual pages in roff, generated from the
//! same clap definition as `--help`, so that the two cannot disagree. The
//! Debian package (`cargo xtask deb`) installs what it writes.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write tgt-trace.1 and a tgt-trace-COMMAND.1 page for each command
    /// into DIR, instead of tgt-trace.1 alone to standard output.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

impl ManArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let cmd = crate::Cli::command();
        match self.out_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                clap_mangen::generate_to(cmd, &dir)
                    .with_context(|| format!("writing the manual pages to {}", dir.display()))?;
            }
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(cmd).render(&mut page)?;
                std::io::stdout()
                    .lock()
                    .write_all(&page)
                    .context("writing the manual page")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(cmd: clap::Command) -> String {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .expect("render to memory");
        String::from_utf8(out).expect("roff is UTF-8")
    }

    #[test]
    fn the_page_names_the_commands_but_not_itself() {
        let text = page(crate::Cli::command());
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq"),
            "not roff: {text:.80}"
        );
        assert!(text.contains(".TH tgt-trace 1"), "{text}");
        for command in [
            "record", "replay", "report", "check", "schema", "probes", "tui",
        ] {
            assert!(
                text.contains(&format!("tgt\\-trace\\-{command}(1)")),
                "{command} missing from:\n{text}"
            );
        }
        assert!(
            !text.contains("tgt\\-trace\\-man("),
            "the hidden man command is listed"
        );
    }

    #[test]
    fn out_dir_gets_a_page_per_command() {
        let dir = std::env::temp_dir().join(format!("tgt-trace-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ManArgs {
            out_dir: Some(dir.clone()),
        }
        .run()
        .expect("writes the pages");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("the directory exists")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        std::fs::remove_dir_all(&dir).expect("cleaned up");
        assert!(names.contains(&"tgt-trace.1".to_owned()), "{names:?}");
        assert!(
            names.contains(&"tgt-trace-record.1".to_owned()),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("tgt-trace-man")),
            "{names:?}"
        );
    }
}
