//! tgt-trace: an eBPF tracer for the tgt SCSI target framework.
//!
//! Data flows one way, through named seams: a [`source`] (the live probes,
//! or a recorded trace) → the one [`pipeline::Driver`], which runs the
//! matcher ([`correlate`]) → [`sink`]s (the NDJSON trace, the TUI's screen,
//! `replay`/`report`/`check`). Only [`probe`], below [`source::probes`],
//! touches aya.

pub mod check;
pub mod correlate;
pub mod decode;
pub mod event;
pub mod existing;
pub mod flow;
pub mod lio;
pub mod locate;
pub mod pipeline;
pub mod plausible;
pub mod points;
pub mod probe;
pub mod proof;
pub mod reader;
pub mod record;
pub mod report;
pub mod schema;
pub mod serve;
pub mod sink;
pub mod source;
pub mod stats;
pub mod synth;
pub mod tgtd;
pub mod trace;
pub mod tui;

/// The version of the NDJSON trace format. Any change to a field's name or
/// meaning bumps it. `schema/tgt-trace.schema.json` describes it.
///
/// 2 added the matched lines (`command`, `tmf`, `orphan`, `matched_summary`)
/// to recorded traces, `blocked_ns` on covered commands and
/// `tmfs_by_function` in the counts; version 1 traces are a subset and are
/// still read.
///
/// 3 added `connection_closed` on `tmf_response` events and
/// `response_dropped` on TMF records (a response tgtd freed unsent because
/// the initiator's connection was closed; such a TMF is unanswered and has no
/// `latency_ns`). Versions 1 and 2 are still read.
///
/// 4 added the iSCSI layer's TMF events (`tmf_received`, `tmf_sent`,
/// `conn_close`), the LUN's bytes (`lun_raw`) on `cmd_queue` and
/// `tmf_request`, and on TMF records `itt`, `iscsi_response`, `sent_ns`,
/// `delivery` and `referenced`, the outcomes `not_supported_by_transport`,
/// `rejected_by_transport` and `no_task_not_yet_queued`, and the orphan
/// `aborted_command_ran`. Versions 1 to 3 are still read; their TMFs'
/// delivery is `unknown`.
///
/// 5 added `sinks` on `summary` and `matched_summary` lines (and in `report
/// --json`): what each of the recording's sinks (`ndjson`, `screen`, ...)
/// could not take, by cause. Versions 1 to 4 are still read.
///
/// 6 made the `tmf` probe set attach no command probe: each TMF's covered
/// set comes from the walk of tgtd's task lists at its request, as the
/// events `tmf_covers` (one per command found) and `tmf_walked` (the end of
/// the walk), the header's probe point `tmf_walk`, and the drop count
/// `walk_truncated`. Versions 1 to 5 are still read; a version 5 `tmf`
/// trace's covered sets come from its releases, as before.
///
/// 7 made the header's `tgtd_layout` say how the layout was proved:
/// `{"by": "machine_code", "unproved": [...]}`, each field shown from the
/// build's own code (`proof`); older values (`known_build`,
/// `code_fingerprint`) are still read. It also added `layout_violations`
/// on `summary` and `matched_summary` lines (and in `report --json`): what
/// the runtime layout plausibility checks ([`plausible`]) found, by check,
/// with the first few examples; absent when nothing was found. Versions 1
/// to 6 are still read (replay runs the checks over their events).
///
/// Schema 8 traces the kernel's target too: `target` in the header (`tgtd`,
/// the default when absent, or `lio`), a `btf` layout check, the LIO points
/// (`lio_*`), the events `tmf_execute`, `abort_wait` and `abort_waited`,
/// and `executed_ns` on `tmf` records.
///
/// Schema 9 adds `--sample`: `sampling` in the header, `sampled` on the
/// probe points attached only in its windows, the event `sample_window`,
/// `sampling` on the histograms and the counts `sample_windows`,
/// `commands_sampled` and `commands_cut_by_window`.
pub const SCHEMA_VERSION: u32 = 9;

/// The oldest trace format this version reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;
