//! `tgt-trace probes`: what tgt-trace can attach to a tgtd binary, and why
//! not where it cannot.

use std::{path::PathBuf, process::ExitCode};

use tgt_trace::tgtd::{DEFAULT_TGTD, TgtdBinary};

#[derive(clap::Args)]
pub struct ProbesArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TGTD)]
    tgtd: PathBuf,
}

impl ProbesArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let tgtd = self.tgtd;

        let binary = TgtdBinary::inspect(&tgtd)?;
        println!(
            "{}: build id {}, layout {:?}",
            binary.path.display(),
            binary.build_id,
            binary.layout
        );
        for name in tgt_trace::tgtd::probe_functions() {
            match binary.symbol_offset(name) {
                Some(offset) => println!("  {name:<22} offset {offset:#x}"),
                None => println!("  {name:<22} missing"),
            }
        }
        match binary.tmf_response_offset {
            Some(offset) => println!("  {:<22} offset {offset:#x}", "iscsi_tm_done"),
            None => println!(
                "  {:<22} not found: TMF responses will be inferred",
                "iscsi_tm_done"
            ),
        }
        println!(
            "  {:<22} {}",
            "task->conn->state",
            if binary.tmf_response_reads_connection {
                "verified: responses freed on a closed connection are flagged"
            } else {
                "not verified: a response dropped on a closed connection looks sent"
            }
        );
        // The iSCSI layer's TMF points, found in the machine code.
        let points = [
            ("iscsi_tm_execute", "TMFs as received", &binary.tmf_received),
            (
                "iscsi_tm_tx_start",
                "responses handed to the socket",
                &binary.tmf_tx_start,
            ),
            ("iscsi_task_tx_done", "responses written", &binary.tmf_sent),
        ];
        for (function, what, point) in points {
            match point {
                Ok(p) => println!(
                    "  {function:<22} offset {:#x} ({what}; register {} holds the {})",
                    p.address,
                    tgt_trace::locate::register_name(p.task_reg),
                    if function == "iscsi_tm_tx_start" {
                        "connection"
                    } else {
                        "task"
                    }
                ),
                Err(why) => println!("  {function:<22} not found: {why}; {what} are unknown"),
            }
        }
        match &binary.conn_close {
            Ok(offset) => println!("  {:<22} offset {offset:#x}", "conn_close"),
            Err(why) => println!("  {:<22} not used: {why}", "conn_close"),
        }
        match &binary.tmf_walk {
            Ok(walk) => println!(
                "  {:<22} proved: target_list at {:+#x} from target_mgmt_request; \
                 abort_task_set's lists and cmd_processed() (the tmf set's covered sets)",
                "tmf_walk", walk.target_list_from_entry
            ),
            Err(why) => println!(
                "  {:<22} off: {why}; the tmf probe set sees no covered commands",
                "tmf_walk"
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
