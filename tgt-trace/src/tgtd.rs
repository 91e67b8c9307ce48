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
use tgt_trace_common::layout;

use crate::locate::{TaskPoint, TmfWalk};

/// The path Debian installs tgtd at.
pub const DEFAULT_TGTD: &str = "/usr/sbin/tgtd";

/// Builds whose layout was checked field by field against tgt's source and a
/// live daemon (tags and CDB opcodes read at these offsets matched the
/// initiator's): GNU build id → what it is.
const KNOWN_BUILDS: &[(&str, &str)] = &[(
    "123c0b80b438c2fab733b05d8897d44df2f3837a",
    "Debian bookworm tgt 1:1.0.85-1+deb12u1 amd64",
)];

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
    /// Used only to check the struct layout (it reads `scsi_cmd.attribute`).
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

/// Why a tgtd binary cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TgtdError {
    /// The file does not exist or cannot be read.
    #[error(
        "tgtd not found at {path}: {source}; install tgt (`apt-get install tgt`) or pass --tgtd PATH"
    )]
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
    /// The struct layout does not match what the probes read.
    #[error(
        "{path} (build id {build_id}) is an unknown tgtd build whose struct layout does not \
         match tgt 1.0.85's:\n{mismatches}\ntgt-trace refuses to read it with wrong offsets; \
         use a tgt 1.0.85..1.0.97 x86_64 build, or teach tgt-trace-common::layout this one"
    )]
    UnknownLayout {
        path: PathBuf,
        build_id: String,
        mismatches: String,
    },
}

/// How the layout of this build was accepted.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayoutCheck {
    /// A build tgt-trace was tested against.
    KnownBuild { build: String },
    /// An unlisted build whose code accesses every field at the expected offset.
    CodeFingerprint,
}

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
    /// The iSCSI layer's TMF points (`crate::locate`), as file offsets, or
    /// why each is missing.
    pub tmf_received: Result<TaskPoint, String>,
    pub tmf_sent: Result<TaskPoint, String>,
    pub tmf_tx_start: Result<TaskPoint, String>,
    pub conn_close: Result<u64, String>,
    /// Where the `tmf` probe set's walk of tgtd's task lists starts, with
    /// its offsets proved (`crate::locate::tmf_walk`), or why not.
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
        let layout = match KNOWN_BUILDS.iter().find(|(id, _)| *id == build_id) {
            Some((_, build)) => LayoutCheck::KnownBuild {
                build: (*build).to_owned(),
            },
            None => {
                let mismatches = fingerprint_mismatches(&file, &symbols);
                if !mismatches.is_empty() {
                    return Err(TgtdError::UnknownLayout {
                        path: path.to_owned(),
                        build_id,
                        mismatches: mismatches.join("\n"),
                    });
                }
                LayoutCheck::CodeFingerprint
            }
        };
        let tm_done = iscsi_mgmt_end_notify(&file);
        let tmf_response_offset = tm_done.and_then(|address| file_offset(&file, address));
        let tmf_response_reads_connection = tm_done
            .and_then(|address| {
                function_bytes(
                    &file,
                    Symbol {
                        address,
                        size: TM_DONE_SCAN_BYTES,
                    },
                )
            })
            .is_some_and(reads_connection_state);
        let exported: HashMap<String, (u64, u64)> = symbols
            .iter()
            .map(|(name, s)| (name.clone(), (s.address, s.size)))
            .collect();
        let points = crate::locate::iscsi_points(&file, &exported);
        let tmf_walk = crate::locate::tmf_walk(&file, &exported);
        let to_file = |p: Result<TaskPoint, String>| {
            p.and_then(|p| {
                file_offset(&file, p.address)
                    .map(|address| TaskPoint { address, ..p })
                    .ok_or_else(|| format!("{:#x} is not in a loadable segment", p.address))
            })
        };
        let tmf_received = to_file(points.received);
        let tmf_sent = to_file(points.sent);
        let tmf_tx_start = to_file(points.tx_start);
        let conn_close = points.conn_close.and_then(|()| {
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
            tmf_received,
            tmf_sent,
            tmf_tx_start,
            conn_close,
            tmf_walk,
        })
    }

    /// The file offset of an exported function, for an offset-based uprobe.
    pub fn symbol_offset(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).map(|s| s.address)
    }
}

/// A memory operand with displacement `disp` in x86_64 code: ModRM with
/// mod=01 (disp8) or mod=10 (disp32), with or without a SIB byte.
fn uses_displacement(code: &[u8], disp: u32) -> bool {
    let has_modrm = |at: usize, mode: u8| {
        let check = |i: usize, with_sib: bool| {
            code.get(i)
                .is_some_and(|&m| m >> 6 == mode && ((m & 7) == 4) == with_sib)
        };
        (at >= 1 && check(at - 1, false)) || (at >= 2 && check(at - 2, true))
    };
    if disp < 0x80 {
        let byte = disp as u8;
        code.iter()
            .enumerate()
            .any(|(i, &b)| b == byte && has_modrm(i, 0b01))
    } else {
        let le = disp.to_le_bytes();
        code.windows(4)
            .enumerate()
            .any(|(i, w)| w == le && has_modrm(i, 0b10))
    }
}

/// Checks that each field the probes read is used at its expected offset by
/// the exported function that, in tgt's source, touches it. Returns one line
/// per field that is not. `scsi_cmd.tag` is not checked directly: it is the
/// only 8-byte field between `attribute` (164) and `result` (176), so those
/// two pin it at 168.
fn fingerprint_mismatches(
    file: &object::File<'_>,
    symbols: &HashMap<String, Symbol>,
) -> Vec<String> {
    let checks: &[(&str, &str, usize)] = &[
        (symbol::QUEUE, "scsi_cmd.cmd_itn_id", layout::CMD_ITN_ID),
        (symbol::QUEUE, "scsi_cmd.scb", layout::CMD_SCB),
        (symbol::QUEUE, "scsi_cmd.lun", layout::CMD_LUN),
        (
            symbol::CMD_PERFORM_CORE,
            "scsi_cmd.attribute",
            layout::CMD_ATTRIBUTE,
        ),
        (symbol::RESULT, "scsi_cmd.result", layout::CMD_RESULT),
        (symbol::RELEASE, "scsi_cmd.mreq", layout::CMD_MREQ),
        (symbol::RELEASE, "mgmt_req.busy", layout::MREQ_BUSY),
        (symbol::RELEASE, "mgmt_req.function", layout::MREQ_FUNCTION),
        (symbol::RELEASE, "mgmt_req.result", layout::MREQ_RESULT),
    ];
    checks
        .iter()
        .filter_map(|&(function, field, offset)| {
            let code = symbols.get(function).and_then(|s| function_bytes(file, *s));
            match code {
                None => Some(format!("  {field}: {function} is missing or has no code")),
                Some(code) if !uses_displacement(code, offset as u32) => Some(format!(
                    "  {field}: {function} never accesses offset {offset}"
                )),
                Some(_) => None,
            }
        })
        .collect()
}

fn function_bytes<'a>(file: &object::File<'a>, sym: Symbol) -> Option<&'a [u8]> {
    let section = file
        .sections()
        .find(|s| s.address() <= sym.address && sym.address < s.address() + s.size())?;
    let data = section.data().ok()?;
    let start = usize::try_from(sym.address - section.address()).ok()?;
    let len = usize::try_from(sym.size.max(1)).ok()?;
    data.get(start..start.checked_add(len)?.min(data.len()))
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
fn iscsi_mgmt_end_notify(file: &object::File<'_>) -> Option<u64> {
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

/// `iscsi_tm_done` is static, so its size is unknown: this much of it is
/// scanned (the Debian build's is 163 bytes, the check is in its first 50).
const TM_DONE_SCAN_BYTES: u64 = 160;

/// Whether this code loads `task->conn` (`mov ISCSI_TASK_CONN(%reg),%reg`)
/// and compares the connection's state with `STATE_CLOSE`
/// (`cmpl $STATE_CLOSE,ISCSI_CONN_STATE(%reg)`), as tgt's `iscsi_tm_done`
/// does before it frees a response instead of sending it.
fn reads_connection_state(code: &[u8]) -> bool {
    let Ok(close) = u8::try_from(layout::ISCSI_STATE_CLOSE) else {
        return false;
    };
    // cmp r/m32, imm8 is 0x83 /7; with no displacement the ModRM is
    // mod=00 reg=111 and a base register other than rsp/rbp.
    let compares_state = layout::ISCSI_CONN_STATE == 0
        && code.windows(3).any(|w| {
            w[0] == 0x83 && w[1] >> 3 == 0b00_111 && !matches!(w[1] & 7, 4 | 5) && w[2] == close
        });
    compares_state && uses_displacement(code, layout::ISCSI_TASK_CONN as u32)
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

    #[test]
    fn displacement_scan_reads_modrm() {
        // mov %esi,0xb0(%rdx)
        assert!(uses_displacement(&[0x89, 0xb2, 0xb0, 0, 0, 0], 0xb0));
        // mov 0x78(%rsi),%r8
        assert!(uses_displacement(&[0x4c, 0x8b, 0x46, 0x78], 0x78));
        // lea 0x9c(%r12),%rsi: SIB form
        assert!(uses_displacement(
            &[0x49, 0x8d, 0xb4, 0x24, 0x9c, 0, 0, 0],
            0x9c
        ));
        // The bytes without a ModRM of the right mode before them. (An opcode
        // byte can look like a ModRM: this is a fingerprint, not a disassembler,
        // which is why it checks nine fields and not one.)
        assert!(!uses_displacement(&[0x00, 0xb0, 0, 0, 0], 0xb0));
        assert!(!uses_displacement(&[0x89, 0x02, 0x78], 0x78));
        assert!(!uses_displacement(&[], 0x08));
    }

    /// A build whose struct layout differs: Debian's tgtd with another
    /// build id and `target_cmd_done`'s code blanked, as if `scsi_cmd.mreq`
    /// and `mgmt_req`'s fields had moved. It is refused, naming the fields.
    #[test]
    fn a_changed_layout_is_refused_by_field() {
        let path = Path::new(DEFAULT_TGTD);
        if !path.exists() {
            eprintln!("skipped: {DEFAULT_TGTD} is not installed");
            return;
        }
        let mut data = std::fs::read(path).expect("readable");
        let (build_id, release) = {
            let file = object::File::parse(&*data).expect("ELF");
            let id = file
                .build_id()
                .expect("notes")
                .expect("a build id")
                .to_vec();
            let release = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(symbol::RELEASE))
                .map(|s| (s.address(), s.size()))
                .expect("target_cmd_done");
            let offset = file_offset(&file, release.0).expect("mapped");
            (id, (offset as usize, release.1 as usize))
        };
        let at = data
            .windows(build_id.len())
            .position(|w| w == build_id)
            .expect("the build id's bytes");
        data[at] ^= 0xff;
        // int3 everywhere: no field access left in the function.
        data[release.0..release.0 + release.1].fill(0xcc);
        let copy = std::env::temp_dir().join(format!("tgtd-changed-{}", std::process::id()));
        std::fs::write(&copy, &data).expect("write the copy");
        let err = TgtdBinary::inspect(&copy).expect_err("refused");
        let _ = std::fs::remove_file(&copy);
        let text = err.to_string();
        assert!(matches!(err, TgtdError::UnknownLayout { .. }), "{text}");
        for field in ["scsi_cmd.mreq", "mgmt_req.busy", "mgmt_req.function"] {
            assert!(text.contains(field), "names {field}: {text}");
        }
        assert!(!text.contains("scsi_cmd.lun"), "only what differs: {text}");
    }

    #[test]
    fn the_connection_state_check_is_recognised() {
        // Debian's iscsi_tm_done: mov 0x68(%rdx),%rax; cmpl $0xa,(%rax).
        let tm_done = [0x48, 0x8b, 0x42, 0x68, 0x83, 0x38, 0x0a];
        assert!(reads_connection_state(&tm_done));
        // Another task->conn offset, or another state, is not this layout.
        assert!(!reads_connection_state(&[
            0x48, 0x8b, 0x42, 0x70, 0x83, 0x38, 0x0a
        ]));
        assert!(!reads_connection_state(&[
            0x48, 0x8b, 0x42, 0x68, 0x83, 0x38, 0x0b
        ]));
        // cmpl with an rbp base needs a displacement: not the same operand.
        assert!(!reads_connection_state(&[
            0x48, 0x8b, 0x42, 0x68, 0x83, 0x3d, 0x0a
        ]));
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
    fn debian_tgtd_is_a_known_build_with_a_tmf_response_probe() {
        let path = Path::new(DEFAULT_TGTD);
        if !path.exists() {
            eprintln!("skipped: {DEFAULT_TGTD} is not installed");
            return;
        }
        let bin = TgtdBinary::inspect(path).expect("Debian's tgtd is traceable");
        let data = std::fs::read(path).expect("readable");
        let file = object::File::parse(&*data).expect("ELF");
        let symbols: HashMap<String, Symbol> = file
            .dynamic_symbols()
            .filter_map(|s| {
                Some((
                    s.name().ok()?.to_owned(),
                    Symbol {
                        address: s.address(),
                        size: s.size(),
                    },
                ))
            })
            .collect();
        // The fingerprint must accept the build the allow-list accepts.
        assert_eq!(
            fingerprint_mismatches(&file, &symbols),
            Vec::<String>::new()
        );
        assert!(bin.tmf_response_offset.is_some(), "iscsi_tm_done not found");
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
