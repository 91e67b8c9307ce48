//! What tgt-trace needs to know about a tgtd binary before it attaches:
//! its exported symbols, its build, whether its struct layout is the one the
//! probes read, and where the static TMF-response function lives.
//!
//! Pure file inspection; nothing here attaches or reads another process.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, RelocationFlags, elf};

use crate::{
    points::Point,
    proof::{Field, LayoutProof},
};
use tgt_trace_common::layout;

use crate::locate::{TaskPoint, TmfWalk};

/// The path Debian installs tgtd at.
pub const DEFAULT_TGTD: &str = "/usr/sbin/tgtd";

/// Without these nothing useful is left to trace: the TMF request itself
/// (`target_mgmt_request`'s arguments and `mgmt_req.mid`) and `scsi_cmd.tag`,
/// by which every command and every aborted one is known.
pub const REQUIRED: [Field; 3] = [Field::MgmtArgs, Field::MreqMid, Field::CmdTag];

/// The exported functions the probes attach to, by path of the tgt core.
pub mod symbol {
    pub const QUEUE: &str = "target_cmd_queue";
    pub const PERFORM: &str = "scsi_cmd_perform";
    pub const RESULT: &str = "target_cmd_io_done";
    pub const RELEASE: &str = "target_cmd_done";
    pub const TMF_REQUEST: &str = "target_mgmt_request";
    pub const NEXUS_CREATE: &str = "it_nexus_create";
    pub const NEXUS_DESTROY: &str = "it_nexus_destroy";
    /// The iSCSI layer's connection teardown: a TMF response still queued on
    /// the connection is freed unsent there.
    pub const CONN_CLOSE: &str = "conn_close";
    /// Used only to prove the struct layout (it reads `scsi_cmd.attribute`).
    pub const CMD_PERFORM_CORE: &str = "target_cmd_perform";
}

/// The exported functions probes attach to, in probe-map order.
pub fn probe_functions() -> [&'static str; 7] {
    [
        symbol::QUEUE,
        symbol::PERFORM,
        symbol::RESULT,
        symbol::RELEASE,
        symbol::TMF_REQUEST,
        symbol::NEXUS_CREATE,
        symbol::NEXUS_DESTROY,
    ]
}

/// What the kernel does with the instruction a uprobe displaces, on each
/// hit. Linux (6.18, `arch/x86/kernel/uprobes.c`) emulates a few kinds in
/// the trap handler: a push of a register and relative jumps, calls and
/// conditional jumps (and some nops, not counted on here); any other
/// instruction is copied to a slot and single-stepped there, a second trap per hit (BENCHMARKS.md measures
/// 3.3 µs of tgtd's time per emulated hit and 9.0 µs per single-stepped
/// one on the machine it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UprobeStep {
    Emulated,
    SingleStepped,
}

impl UprobeStep {
    pub fn of(insn: &iced_x86::Instruction) -> UprobeStep {
        use iced_x86::{Mnemonic, OpKind};
        let emulated = match insn.mnemonic() {
            Mnemonic::Push => insn.op0_kind() == OpKind::Register,
            // Which nops a kernel emulates has changed over releases; none
            // is counted on.
            Mnemonic::Nop => false,
            // Relative jmp, jcc and call (`branch_setup_xol_ops`); not
            // loop/jrcxz, nor anything indirect.
            _ => insn.is_jcc_short_or_near() || insn.is_jmp_short_or_near() || insn.is_call_near(),
        };
        if emulated {
            UprobeStep::Emulated
        } else {
            UprobeStep::SingleStepped
        }
    }

    pub fn is_emulated(self) -> bool {
        self == UprobeStep::Emulated
    }

    pub fn name(self) -> &'static str {
        match self {
            UprobeStep::Emulated => "emulated",
            UprobeStep::SingleStepped => "single-stepped",
        }
    }
}

/// Why a tgtd binary cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TgtdError {
    /// The file does not exist or cannot be read.
    #[error("tgtd not found at {path}; install tgt (`apt-get install tgt`) or pass --tgtd PATH")]
    NotFound {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not an ELF file tgt-trace can parse.
    #[error(
        "{path} is not an x86_64 ELF executable tgt-trace can read ({reason}); pass --tgtd PATH to a tgtd binary"
    )]
    NotElf { path: PathBuf, reason: String },
    /// Exported symbols the probes need are absent.
    #[error(
        "{path} lacks the exported symbol(s) {missing}; this is not a tgtd tgt-trace knows \
         (tgt 1.0.85..1.0.97 export them): pass --tgtd PATH to such a build"
    )]
    MissingSymbols { path: PathBuf, missing: String },
    /// The fields the TMF request probe reads could not be proved from
    /// this build's machine code: nothing useful could be traced.
    #[error(
        "{path} (build id {build_id}): tgt-trace could not prove from its machine code where \
         the fields it must read are, and refuses to read tgtd with unproved offsets:\n\
         {unproved}\n`tgt-trace probes --tgtd {path}` shows every field; use a tgt \
         1.0.85..1.0.97 x86_64 build whose code shows them, or teach \
         tgt-trace-common::layout and tgt-trace's proof this one"
    )]
    Unproved {
        path: PathBuf,
        build_id: String,
        unproved: String,
    },
}

/// How the layout of this build was accepted.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayoutCheck {
    /// Proved field by field from the build's machine code (`crate::proof`);
    /// the probes that read a field not proved are not attached.
    MachineCode {
        /// The fields not proved, by name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unproved: Vec<String>,
    },
    /// Traces before schema 7: a build tgt-trace was tested against.
    KnownBuild { build: String },
    /// Traces before schema 7: a byte-pattern fingerprint.
    CodeFingerprint,
    /// The kernel target (LIO): every offset read from the running
    /// kernel's BTF (`crate::lio`), by `struct.member`.
    Btf {
        offsets: std::collections::BTreeMap<String, u32>,
    },
}

/// An entry probe's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// File offset of the instruction.
    pub offset: u64,
    /// Bytes past the function's entry.
    pub from_entry: u64,
    /// Where its arguments are (`tgt_trace_common::args`).
    pub args: u64,
}

/// The entry probes placed past a single-stepped first instruction, with
/// the arguments each one's program reads.
const PLACED: [(Point, &[usize]); 8] = [
    (Point::Queue, &[0, 1]),
    (Point::Perform, &[1]),
    (Point::Result, &[0, 1]),
    (Point::Release, &[0]),
    (Point::TmfResponse, &[0]),
    (Point::ConnClose, &[0]),
    (Point::NexusCreate, &[0, 1, 3]),
    (Point::NexusDestroy, &[0, 1]),
];

/// A tgtd binary, inspected.
#[derive(Debug, Clone)]
pub struct TgtdBinary {
    pub path: PathBuf,
    pub build_id: String,
    pub layout: LayoutCheck,
    /// File offsets of the exported functions, by name.
    symbols: HashMap<String, Symbol>,
    /// File offset of the iSCSI driver's `mgmt_end_notify` (`iscsi_tm_done`),
    /// when it could be found.
    pub tmf_response_offset: Option<u64>,
    /// `iscsi_tm_done` reads `task->conn->state` at the offsets the response
    /// probe uses, so the probe can tell a response sent from one dropped.
    pub tmf_response_reads_connection: bool,
    /// Each field the probes read, proved from the machine code or not.
    pub proof: LayoutProof,
    /// Where each entry probe sits (file offset) and where its arguments
    /// are there: the first instruction the kernel emulates
    /// (`crate::proof::place`).
    pub placements: HashMap<Point, Placed>,
    /// The iSCSI layer's TMF points (`crate::locate`), as file offsets, or
    /// why each is missing.
    pub tmf_received: Result<TaskPoint, String>,
    pub tmf_sent: Result<TaskPoint, String>,
    pub tmf_tx_start: Result<TaskPoint, String>,
    pub conn_close: Result<u64, String>,
    /// Where the `tmf` probe set's walk of tgtd's task lists starts, with
    /// its offsets proved (`crate::proof::prove_walk`), or why not.
    pub tmf_walk: Result<TmfWalk, String>,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    address: u64,
    size: u64,
}

impl TgtdBinary {
    /// Reads and checks the binary at `path`.
    pub fn inspect(path: &Path) -> Result<TgtdBinary, TgtdError> {
        let data = std::fs::read(path).map_err(|source| TgtdError::NotFound {
            path: path.to_owned(),
            source,
        })?;
        let not_elf = |reason: String| TgtdError::NotElf {
            path: path.to_owned(),
            reason,
        };
        let file = object::File::parse(&*data).map_err(|e| not_elf(e.to_string()))?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(not_elf(format!("architecture {:?}", file.architecture())));
        }
        let symbols: HashMap<String, Symbol> = file
            .dynamic_symbols()
            .filter(|s| s.is_definition())
            .filter_map(|s| {
                let name = s.name().ok()?.to_owned();
                Some((
                    name,
                    Symbol {
                        address: s.address(),
                        size: s.size(),
                    },
                ))
            })
            .collect();
        let missing: Vec<&str> = probe_functions()
            .into_iter()
            .filter(|name| !symbols.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            return Err(TgtdError::MissingSymbols {
                path: path.to_owned(),
                missing: missing.join(", "),
            });
        }
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|id| {
                id.iter().fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                })
            })
            .unwrap_or_else(|| "none".to_owned());
        let tm_done = iscsi_mgmt_end_notify(&file);
        let tmf_response_offset = tm_done.and_then(|address| file_offset(&file, address));
        let exported: HashMap<String, (u64, u64)> = symbols
            .iter()
            .map(|(name, s)| (name.clone(), (s.address, s.size)))
            .collect();
        let Some(code) = crate::proof::Code::new(&file, &exported) else {
            return Err(not_elf("it has no .text section".to_owned()));
        };
        let proof = crate::proof::prove(&code, tm_done);
        let tmf_walk = crate::proof::prove_walk(&code);
        let tmf_response_reads_connection =
            proof.proved(Field::TaskConn) && proof.proved(Field::ConnState);
        let layout = LayoutCheck::MachineCode {
            unproved: proof
                .unproved()
                .map(|f| f.field.name().to_owned())
                .collect(),
        };
        let mut placements = HashMap::new();
        for (point, needs) in PLACED {
            let function = match point {
                Point::TmfResponse => tm_done.map(|a| (a, None)),
                _ => exported
                    .get(point.function())
                    .map(|&(a, size)| (a, Some(size))),
            };
            let Some((entry, size)) = function else {
                continue;
            };
            let place = crate::proof::place(&code, entry, size, needs);
            if let Some(offset) = file_offset(&file, place.address) {
                placements.insert(
                    point,
                    Placed {
                        offset,
                        from_entry: place.from_entry,
                        args: place.args,
                    },
                );
            }
        }
        let points = crate::locate::iscsi_points(&file, code.instructions(), &exported);
        let to_file = |p: Result<TaskPoint, String>| {
            p.and_then(|p| {
                file_offset(&file, p.address)
                    .map(|address| TaskPoint { address, ..p })
                    .ok_or_else(|| format!("{:#x} is not in a loadable segment", p.address))
            })
        };
        let tmf_received = to_file(crate::proof::prove_received(&code));
        let tmf_sent = to_file(points.sent);
        let tmf_tx_start = to_file(points.tx_start);
        let conn_close = crate::proof::prove_conn_close(&code).and_then(|()| {
            symbols
                .get(symbol::CONN_CLOSE)
                .and_then(|s| file_offset(&file, s.address))
                .ok_or_else(|| "conn_close is not exported".to_owned())
        });
        let mut symbols_by_offset = HashMap::new();
        for (name, sym) in symbols {
            if let Some(offset) = file_offset(&file, sym.address) {
                symbols_by_offset.insert(
                    name,
                    Symbol {
                        address: offset,
                        size: sym.size,
                    },
                );
            }
        }
        Ok(TgtdBinary {
            path: path.to_owned(),
            build_id,
            layout,
            symbols: symbols_by_offset,
            tmf_response_offset,
            tmf_response_reads_connection,
            proof,
            placements,
            tmf_received,
            tmf_sent,
            tmf_tx_start,
            conn_close,
            tmf_walk,
        })
    }

    /// Why this build cannot be traced at all: a field of [`REQUIRED`] is
    /// not proved. Other unproved fields only switch off the probes that
    /// read them ([`TgtdBinary::unproved_for`]).
    pub fn refusal(&self) -> Option<TgtdError> {
        self.proof.first_unproved(&REQUIRED)?;
        Some(TgtdError::Unproved {
            path: self.path.clone(),
            build_id: self.build_id.clone(),
            unproved: self
                .proof
                .unproved()
                .map(|f| {
                    format!(
                        "  {}{}: {}",
                        f.field,
                        f.offset.map(|o| format!(" ({o})")).unwrap_or_default(),
                        f.why_not.as_deref().unwrap_or("not proved")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// Why `point` must not be attached: the first field it reads that is
    /// not proved.
    pub fn unproved_for(&self, point: Point) -> Option<String> {
        self.proof.first_unproved(point.needs()).map(|f| {
            format!(
                "{} is not proved in this build's machine code ({}); the probe would read it \
                 at an offset nothing confirms",
                f.field,
                f.why_not.as_deref().unwrap_or("not proved")
            )
        })
    }

    /// The instruction a uprobe at `offset` (a file offset) replaces, in
    /// AT&T syntax, and what the kernel does with it on each hit.
    pub fn probed_instruction(&self, offset: u64) -> Option<(String, UprobeStep)> {
        let data = std::fs::read(&self.path).ok()?;
        let at = usize::try_from(offset).ok()?;
        let code = data.get(at..at.checked_add(16)?.min(data.len()))?;
        // Decoded at its file offset: a branch shows its target as one too.
        let insn =
            iced_x86::Decoder::with_ip(64, code, offset, iced_x86::DecoderOptions::NONE).decode();
        if insn.is_invalid() {
            return None;
        }
        let mut text = String::new();
        iced_x86::Formatter::format(&mut iced_x86::GasFormatter::new(), &insn, &mut text);
        Some((text, UprobeStep::of(&insn)))
    }

    /// The file offsets an exported function's code spans.
    pub fn symbol_range(&self, name: &str) -> Option<std::ops::Range<u64>> {
        self.symbols
            .get(name)
            .map(|s| s.address..s.address + s.size.max(1))
    }

    /// The file offset of an exported function, for an offset-based uprobe.
    pub fn symbol_offset(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).map(|s| s.address)
    }
}

/// Finds `iscsi_tm_done`, which is static, through the iSCSI driver's
/// `struct tgt_driver` (tgt `usr/iscsi/iscsid.c`: `.name = "iscsi"`,
/// `.mgmt_end_notify = iscsi_tm_done`, `.default_bst = "rdwr"`).
///
/// In a PIE the struct's pointers are filled at load by R_X86_64_RELATIVE
/// relocations whose addends are the targets' addresses, so the struct can be
/// found without running tgtd: a relocated slot pointing at "iscsi" whose
/// `default_bst` slot points at "rdwr" (iscsi_tcp's transport struct also
/// names itself "iscsi", but has no such slot). Returns the function's
/// virtual address.
pub(crate) fn iscsi_mgmt_end_notify(file: &object::File<'_>) -> Option<u64> {
    let relative: HashMap<u64, u64> = file
        .dynamic_relocations()?
        .filter_map(|(at, reloc)| match reloc.flags() {
            RelocationFlags::Elf { r_type } if r_type == elf::R_X86_64_RELATIVE => {
                Some((at, u64::try_from(reloc.addend()).ok()?))
            }
            _ => None,
        })
        .collect();
    let points_at = |target: u64, text: &[u8]| -> bool {
        file.sections().any(|s| {
            s.address() <= target
                && target < s.address() + s.size()
                && s.data().ok().and_then(|d| {
                    let at = usize::try_from(target - s.address()).ok()?;
                    d.get(at..at + text.len())
                }) == Some(text)
        })
    };
    let mut found = relative.iter().filter_map(|(&slot, &target)| {
        let is_driver = points_at(target, b"iscsi\0")
            && relative
                .get(&(slot + layout::DRIVER_DEFAULT_BST as u64))
                .is_some_and(|&bst| points_at(bst, b"rdwr\0"));
        is_driver.then(|| {
            relative
                .get(&(slot + layout::DRIVER_MGMT_END_NOTIFY as u64))
                .copied()
        })?
    });
    let first = found.next()?;
    // Two candidates would mean the heuristic is ambiguous: use neither.
    found.next().is_none().then_some(first)
}

/// Virtual address → file offset, through the loadable segment that maps it.
fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (offset, size) = seg.file_range();
        (seg.address() <= address && address < seg.address() + size)
            .then(|| address - seg.address() + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's tgtd with one instruction's displacement changed, as if
    /// `scsi_cmd.result` had moved: `target_cmd_io_done` stores the result
    /// at 184 instead of 176 (`mov %esi,0xb0(%rdx)` → `0xb8`). The field is
    /// reported unproved by name, the probes that read it are off, and the
    /// rest is still traced.
    #[test]
    fn a_moved_field_switches_off_the_probes_that_read_it() {
        let Some(mut data) = debian_tgtd() else {
            return;
        };
        let store = [0x89, 0xb2, 0xb0, 0x00, 0x00, 0x00];
        let at = only(&data, &store, "mov %esi,0xb0(%rdx)");
        data[at + 2] = 0xb8;
        let bin = inspect_copy(&data, "result").expect("still traceable");
        let unproved: Vec<Field> = bin.proof.unproved().map(|f| f.field).collect();
        assert_eq!(unproved, [Field::IoDoneArgs, Field::CmdResult]);
        assert!(bin.refusal().is_none());
        for point in [Point::Result, Point::Release] {
            let why = bin.unproved_for(point).expect("off");
            assert!(why.contains("scsi_set_result(cmd, result)"), "{why}");
        }
        for point in [Point::Queue, Point::TmfRequest, Point::TmfResponse] {
            assert_eq!(bin.unproved_for(point), None);
        }
    }

    /// Debian's tgtd with `target_mgmt_request`'s code blanked: nothing
    /// about a TMF can be read, so tracing is refused, naming the fields.
    #[test]
    fn a_build_whose_tmf_request_is_unproved_is_refused_by_field() {
        let Some(mut data) = debian_tgtd() else {
            return;
        };
        let (offset, size) = {
            let file = object::File::parse(&*data).expect("ELF");
            let sym = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(symbol::TMF_REQUEST))
                .expect("target_mgmt_request");
            (
                file_offset(&file, sym.address()).expect("mapped") as usize,
                sym.size() as usize,
            )
        };
        // int3 everywhere: no field access left in the function.
        data[offset..offset + size].fill(0xcc);
        let bin = inspect_copy(&data, "mgmt").expect("inspected");
        let err = bin.refusal().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, TgtdError::Unproved { .. }), "{text}");
        for field in [
            "target_mgmt_request(tid, itn_id",
            "mgmt_req.mid",
            "scsi_cmd.tag",
        ] {
            assert!(text.contains(field), "names {field}: {text}");
        }
        assert!(
            !text.contains("scsi_cmd.lun"),
            "only what is unproved: {text}"
        );
    }

    fn debian_tgtd() -> Option<Vec<u8>> {
        match std::fs::read(DEFAULT_TGTD) {
            Ok(data) => Some(data),
            Err(_) => {
                eprintln!("skipped: {DEFAULT_TGTD} is not installed");
                None
            }
        }
    }

    fn only(data: &[u8], bytes: &[u8], what: &str) -> usize {
        let at: Vec<usize> = data
            .windows(bytes.len())
            .enumerate()
            .filter(|(_, w)| *w == bytes)
            .map(|(i, _)| i)
            .collect();
        let [at] = at[..] else {
            panic!("one {what} in Debian's tgtd: {at:x?}");
        };
        at
    }

    fn inspect_copy(data: &[u8], name: &str) -> Result<TgtdBinary, TgtdError> {
        let copy = std::env::temp_dir().join(format!("tgtd-{name}-{}", std::process::id()));
        std::fs::write(&copy, data).expect("copy written");
        let bin = TgtdBinary::inspect(&copy);
        let _ = std::fs::remove_file(&copy);
        bin
    }

    #[test]
    fn missing_binary_names_the_fix() {
        let err = TgtdBinary::inspect(Path::new("/nonexistent/tgtd")).expect_err("no such file");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/tgtd") && text.contains("--tgtd PATH"),
            "{text}"
        );
    }

    #[test]
    fn non_elf_is_refused() {
        let err = TgtdBinary::inspect(Path::new("/proc/self/cmdline")).expect_err("not ELF");
        assert!(matches!(err, TgtdError::NotElf { .. }), "{err}");
    }

    #[test]
    fn a_binary_without_tgt_symbols_is_refused_by_name() {
        let err = TgtdBinary::inspect(Path::new("/bin/sh")).expect_err("not tgtd");
        let text = err.to_string();
        assert!(
            text.contains("target_cmd_queue") && text.contains("target_mgmt_request"),
            "{text}"
        );
    }

    /// Runs where Debian's tgt is installed (the e2e machines); elsewhere it
    /// says so and checks nothing.
    #[test]
    fn debian_tgtd_is_proved_with_a_tmf_response_probe() {
        let path = Path::new(DEFAULT_TGTD);
        if !path.exists() {
            eprintln!("skipped: {DEFAULT_TGTD} is not installed");
            return;
        }
        let bin = TgtdBinary::inspect(path).expect("Debian's tgtd is traceable");
        assert!(bin.refusal().is_none());
        assert_eq!(bin.layout, LayoutCheck::MachineCode { unproved: vec![] });
        assert!(bin.tmf_response_offset.is_some(), "iscsi_tm_done not found");
        // target_cmd_io_done starts with `mov %rdi,%rdx`, which the kernel
        // single-steps; its probe goes on the entry block's `je` at 0x2fb3c,
        // where cmd is in rdx and result still in esi (objdump).
        let result = bin.placements[&Point::Result];
        assert_eq!((result.offset, result.from_entry), (0x2fb3c, 0x1c));
        use tgt_trace_common::{args, pt_regs};
        assert_eq!(
            (args::of(result.args, 0), args::of(result.args, 1)),
            (pt_regs::RDX, pt_regs::RSI)
        );
        // Its neighbours start with an emulated push and stay at the entry.
        assert_eq!(bin.placements[&Point::Queue].from_entry, 0);
        assert_eq!(bin.placements[&Point::Queue].args, args::SYSV);
        assert!(
            bin.tmf_response_reads_connection,
            "iscsi_tm_done's task->conn->state check not recognised"
        );
        assert!(bin.symbol_offset(symbol::QUEUE).is_some());
        // The iSCSI layer's TMF points, as objdump shows them in this build:
        // the function read of the inlined iscsi_tm_execute at 0x17a00 (task
        // in rdi), iscsi_task_tx_done's free at 0x19703.
        let received = bin.tmf_received.clone().expect("TMF-received point");
        assert_eq!(
            (received.address, received.task_reg),
            (0x17a00, tgt_trace_common::pt_regs::RDI)
        );
        assert_eq!(
            bin.tmf_sent.clone().expect("TMF-sent point").address,
            0x19703
        );
        assert!(bin.conn_close.is_ok(), "{:?}", bin.conn_close);
        // The TMF response header's store in the inlined iscsi_tm_tx_start,
        // with the connection in rax.
        let tx = bin.tmf_tx_start.clone().expect("TMF transmit-start point");
        assert_eq!(
            (tx.address, tx.task_reg),
            (0x198f6, tgt_trace_common::pt_regs::RAX)
        );
        // The tmf set's walk: target_list (0x58ae0, objdump's lea in
        // target_mgmt_request at 0x302c9) from target_mgmt_request (0x302c0).
        let walk = bin.tmf_walk.clone().expect("the TMF walk is proved");
        assert_eq!(walk.target_list_from_entry, 0x58ae0 - 0x302c0);
    }

    /// A build whose `abort_cmd` tests another bit of `cmd->state` than
    /// `TGT_CMD_PROCESSED` (Debian's tgtd with the immediate of its
    /// `testb $0x2,0x38(%r12)` changed): the walk is off, naming what it
    /// could not prove; the rest of the binary is still traceable.
    #[test]
    fn a_walk_whose_offsets_are_not_proved_is_off() {
        let path = Path::new(DEFAULT_TGTD);
        if !path.exists() {
            eprintln!("skipped: {DEFAULT_TGTD} is not installed");
            return;
        }
        let mut data = std::fs::read(path).expect("readable");
        let testb = [0x41, 0xf6, 0x44, 0x24, 0x38, 0x02];
        let at: Vec<usize> = data
            .windows(testb.len())
            .enumerate()
            .filter(|(_, w)| *w == testb)
            .map(|(i, _)| i)
            .collect();
        let [at] = at[..] else {
            panic!("one testb $0x2,0x38(%r12) in Debian's tgtd: {at:x?}");
        };
        data[at + 5] = 0x04;
        let copy = std::env::temp_dir().join(format!("tgtd-walk-{}", std::process::id()));
        std::fs::write(&copy, &data).expect("copy written");
        let bin = TgtdBinary::inspect(&copy);
        let _ = std::fs::remove_file(&copy);
        let bin = bin.expect("still traceable");
        let why = bin.tmf_walk.expect_err("the walk is off");
        assert!(
            why.contains("cmd_processed") && why.contains("scsi_cmd.state (56)"),
            "{why}"
        );
    }
}
