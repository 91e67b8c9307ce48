//! `tgt-trace replay` and `tgt-trace report`: a recorded trace through the
//! pipeline's driver, its records printed or summed up.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use tgt_trace::{
    correlate::Record,
    reader::TraceReader,
    report::{render_text, replay},
    trace::Line,
};

use super::args::MatchArgs;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The trace, or - for standard input.
    file: PathBuf,
    /// Skip malformed lines (they are counted) instead of failing.
    #[arg(long)]
    lenient: bool,
    #[command(flatten)]
    matching: MatchArgs,
}

impl ReplayArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut reader = TraceReader::open(&self.file, self.lenient)?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut write_error = None;
        let replayed = replay(&mut reader, self.matching.config(), |record| {
            if write_error.is_none()
                && let Err(e) = serde_json::to_writer(&mut out, record)
                    .map_err(std::io::Error::other)
                    .and_then(|()| out.write_all(b"\n"))
            {
                write_error = Some(e);
            }
        })?;
        if let Some(e) = write_error {
            anyhow::bail!("writing the records: {e}");
        }
        let summary = replayed
            .matched_summary()
            .context("replay produced no summary")?;
        serde_json::to_writer(&mut out, &Line::MatchedSummary(Box::new(summary)))?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The trace, or - for standard input.
    file: PathBuf,
    /// The summary as JSON.
    #[arg(long)]
    json: bool,
    /// Skip malformed lines (they are counted) instead of failing.
    #[arg(long)]
    lenient: bool,
    #[command(flatten)]
    matching: MatchArgs,
}

impl ReportArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut reader = TraceReader::open(&self.file, self.lenient)?;
        let mut orphans = Vec::new();
        let replayed = replay(&mut reader, self.matching.config(), |record| {
            if let Record::Orphan(o) = record {
                orphans.push(o.clone());
            }
        })?;
        if self.json {
            let report = replayed
                .report_json(orphans)
                .context("replay produced no summary")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render_text(&replayed, &orphans));
        }
        Ok(ExitCode::SUCCESS)
    }
}
