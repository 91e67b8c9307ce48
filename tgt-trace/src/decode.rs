//! Ring-buffer bytes to typed [`Event`]s. Pure: no I/O, no aya.

use tgt_trace_common::{self as abi, EVENT_SIZE, NEXUS_EVENT_SIZE, kind};

use crate::event::{Event, Waiter};

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than its kind needs. The probes and user space
    /// were built from different versions of `tgt-trace-common`.
    #[error(
        "record of kind {kind} is {len} bytes, expected {expected}; the eBPF object and \
         tgt-trace were built from different sources: rebuild tgt-trace"
    )]
    Short {
        kind: u8,
        len: usize,
        expected: usize,
    },
    /// The record's kind is not one tgt-trace knows.
    #[error(
        "record kind {0} is unknown; the eBPF object is newer than tgt-trace: rebuild tgt-trace"
    )]
    UnknownKind(u8),
    /// An empty record.
    #[error("empty record from the ring buffer")]
    Empty,
}

/// Decodes one record as the probes wrote it.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let Some(&kind) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    let expected = match kind {
        kind::NEXUS_CREATE => NEXUS_EVENT_SIZE,
        kind::CMD_QUEUE..=kind::NEXUS_DESTROY | kind::TMF_RECEIVED..=kind::TMF_WALKED => EVENT_SIZE,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked against size_of::<Event>() above;
    // read_unaligned copes with the ring buffer's 8-byte alignment, and every
    // bit pattern is a valid Event (integers and byte arrays only).
    let raw: abi::Event = unsafe { bytes.as_ptr().cast::<abi::Event>().read_unaligned() };
    Ok(match kind {
        kind::CMD_QUEUE => Event::CmdQueue {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            lun: lun_number(&raw.lun),
            lun_raw: Some(u64::from_be_bytes(raw.lun)),
            opcode: raw.opcode,
            attribute: raw.attribute,
            cmd: raw.cookie,
        },
        kind::CMD_PERFORM => Event::CmdPerform {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            cmd: raw.cookie,
        },
        kind::CMD_RESULT => Event::CmdResult {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            cmd: raw.cookie,
            result: raw.value,
            tmf_mid: (raw.tmf_mid != 0).then_some(raw.tmf_mid),
        },
        kind::CMD_RELEASE => Event::CmdRelease {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            cmd: raw.cookie,
            result: raw.value,
            tmf: (raw.tmf_mid != 0).then_some(Waiter {
                mid: raw.tmf_mid,
                function: raw.function,
                busy: raw.aux,
            }),
        },
        kind::TMF_REQUEST => Event::TmfRequest {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            mid: raw.cookie,
            function: raw.function,
            tag: raw.tag,
            lun: lun_number(&raw.lun),
            lun_raw: Some(u64::from_be_bytes(raw.lun)),
        },
        kind::TMF_RETURN => Event::TmfReturn {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            mid: raw.cookie,
            ret: raw.value,
        },
        kind::TMF_RESPONSE => Event::TmfResponse {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            mid: raw.cookie,
            function: raw.function,
            result: raw.value,
            connection_closed: match raw.aux {
                abi::conn_state::OPEN => Some(false),
                abi::conn_state::CLOSED => Some(true),
                _ => None,
            },
        },
        kind::NEXUS_CREATE => {
            // SAFETY: the length was checked against size_of::<NexusEvent>()
            // above; integers and byte arrays only.
            let nexus: abi::NexusEvent =
                unsafe { bytes.as_ptr().cast::<abi::NexusEvent>().read_unaligned() };
            let copied = &nexus.info[..(nexus.info_len as usize).min(abi::NEXUS_INFO_LEN)];
            let text = copied.split(|&b| b == 0).next().unwrap_or_default();
            let info = String::from_utf8_lossy(text).into_owned();
            Event::NexusCreate {
                ts_ns: raw.ts_ns,
                pid: raw.pid,
                tid: raw.tid,
                itn_id: raw.itn_id,
                initiator: initiator_name(&info),
                info,
            }
        }
        kind::NEXUS_DESTROY => Event::NexusDestroy {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
        },
        kind::TMF_RECEIVED => Event::TmfReceived {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            task: raw.cookie,
            conn: raw.tmf_mid,
            itt: raw.value as u32,
            iscsi_function: raw.function,
            tag: raw.tag,
            lun: lun_number(&raw.lun),
            lun_raw: u64::from_be_bytes(raw.lun),
            referenced: (raw.aux != abi::referenced::NOT_WALKED).then_some(raw.aux),
        },
        kind::TMF_SENT => Event::TmfSent {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            task: raw.cookie,
            conn: raw.tmf_mid,
            itt: raw.aux as u32,
            iscsi_function: raw.function,
            tag: raw.tag,
            // task->result holds a response code (0..6 or 255).
            response: raw.value as u8,
        },
        kind::TMF_TX_START => Event::TmfTxStart {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            conn: raw.cookie,
        },
        kind::CONN_CLOSE => Event::ConnClose {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            conn: raw.cookie,
        },
        kind::TMF_COVERS => Event::TmfCovers {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            mid: raw.cookie,
            tid: raw.tid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            lun: lun_number(&raw.lun),
            lun_raw: u64::from_be_bytes(raw.lun),
            opcode: raw.opcode,
            cmd: raw.tmf_mid,
            state: raw.value as u32,
            defers: raw.aux & abi::covers::DEFERS != 0,
        },
        kind::TMF_WALKED => Event::TmfWalked {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            mid: raw.cookie,
            covered: raw.value as u32,
            truncated: raw.aux & abi::covers::TRUNCATED != 0,
            no_target: raw.aux & abi::covers::NO_TARGET != 0,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// The LUN number tgt uses for an 8-byte SAM LUN (tgt `usr/scsi.c`
/// `__scsi_get_devid`): peripheral and flat addressing; other methods map to
/// `u64::MAX`, as tgt's `TGT_INVALID_DEV_ID`.
pub fn lun_number(lun: &[u8; 8]) -> u64 {
    match lun[0] >> 6 {
        0 => u64::from(lun[1]),
        1 => (u64::from(lun[0] & 0x3f) << 8) | u64::from(lun[1]),
        _ => u64::MAX,
    }
}

/// The initiator name from tgt's iSCSI session text
/// (`usr/iscsi/session.c`: `Initiator: <iqn> alias: <alias>`).
pub fn initiator_name(info: &str) -> Option<String> {
    let rest = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("Initiator:"))?;
    let name = rest.split_whitespace().next()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_bytes(ev: &abi::Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data without implicit padding.
        let slice = unsafe {
            core::slice::from_raw_parts((ev as *const abi::Event).cast::<u8>(), EVENT_SIZE)
        };
        slice.to_vec()
    }

    #[test]
    fn decodes_a_queued_command() {
        let raw = abi::Event {
            kind: kind::CMD_QUEUE,
            opcode: 0x28,
            attribute: abi::task_attr::ORDERED,
            pid: 42,
            ts_ns: 1_000,
            tid: 1,
            itn_id: 0x10001,
            tag: 0x1200_0000,
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            cookie: 0xdead_beef,
            ..Default::default()
        };
        let ev = decode(&raw_bytes(&raw)).expect("decodes");
        assert_eq!(
            ev,
            Event::CmdQueue {
                ts_ns: 1_000,
                pid: 42,
                tid: 1,
                itn_id: 0x10001,
                tag: 0x1200_0000,
                lun: 1,
                lun_raw: Some(0x0001_0000_0000_0000),
                opcode: 0x28,
                attribute: 0x22,
                cmd: 0xdead_beef,
            }
        );
    }

    #[test]
    fn release_with_a_waiting_tmf_names_it() {
        let raw = abi::Event {
            kind: kind::CMD_RELEASE,
            function: abi::tmf::ABORT_TASK,
            value: 0x20,
            aux: 1,
            tmf_mid: 77,
            ..Default::default()
        };
        let Event::CmdRelease { tmf, .. } = decode(&raw_bytes(&raw)).expect("decodes") else {
            panic!("wrong kind");
        };
        assert_eq!(
            tmf,
            Some(Waiter {
                mid: 77,
                function: 0x0d,
                busy: 1
            })
        );
    }

    #[test]
    fn short_record_is_an_error_not_a_panic() {
        let raw = abi::Event {
            kind: kind::CMD_RESULT,
            ..Default::default()
        };
        let bytes = raw_bytes(&raw);
        for len in 1..EVENT_SIZE {
            assert_eq!(
                decode(&bytes[..len]),
                Err(DecodeError::Short {
                    kind: kind::CMD_RESULT,
                    len,
                    expected: EVENT_SIZE
                })
            );
        }
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn nexus_create_needs_its_full_size() {
        let mut bytes = vec![0u8; EVENT_SIZE];
        bytes[0] = kind::NEXUS_CREATE;
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Short { expected, .. }) if expected == NEXUS_EVENT_SIZE)
        );
    }

    #[test]
    fn a_covered_command_and_the_walks_end_decode() {
        let covers = abi::Event {
            kind: kind::TMF_COVERS,
            pid: 7,
            tid: 1,
            itn_id: 0x10,
            tag: 0x2a,
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            opcode: 0x28,
            cookie: 0x900,
            tmf_mid: 0x5000,
            value: 0b110,
            aux: abi::covers::DEFERS,
            ..abi::Event::default()
        };
        let Ok(Event::TmfCovers {
            mid,
            itn_id,
            tag,
            lun,
            cmd,
            state,
            defers,
            ..
        }) = decode(&raw_bytes(&covers))
        else {
            panic!("tmf_covers");
        };
        assert_eq!(
            (mid, itn_id, tag, lun, cmd, state, defers),
            (0x900, 0x10, 0x2a, 1, 0x5000, 0b110, true)
        );
        let walked = abi::Event {
            kind: kind::TMF_WALKED,
            cookie: 0x900,
            value: 3,
            aux: abi::covers::TRUNCATED,
            ..abi::Event::default()
        };
        assert_eq!(
            decode(&raw_bytes(&walked)),
            Ok(Event::TmfWalked {
                ts_ns: 0,
                pid: 0,
                mid: 0x900,
                covered: 3,
                truncated: true,
                no_target: false,
            })
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut bytes = vec![0u8; NEXUS_EVENT_SIZE];
        for k in [0u8, 16, 200, 255] {
            bytes[0] = k;
            assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(k)));
        }
    }

    #[test]
    fn nexus_create_parses_the_initiator() {
        let text =
            b"Initiator: iqn.2026-11.test:ini alias: box\nConnection: 0\n  IP Address: 127.0.0.1\0";
        let mut record = abi::NexusEvent {
            event: abi::Event {
                kind: kind::NEXUS_CREATE,
                itn_id: 7,
                ..Default::default()
            },
            info_len: text.len() as u32,
            _pad: 0,
            info: [0; abi::NEXUS_INFO_LEN],
        };
        record.info[..text.len()].copy_from_slice(text);
        // SAFETY: NexusEvent is repr(C) plain data without implicit padding.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&record as *const abi::NexusEvent).cast::<u8>(),
                NEXUS_EVENT_SIZE,
            )
        };
        let Event::NexusCreate {
            initiator,
            info,
            itn_id,
            ..
        } = decode(bytes).expect("decodes")
        else {
            panic!("wrong kind");
        };
        assert_eq!(itn_id, 7);
        assert_eq!(initiator.as_deref(), Some("iqn.2026-11.test:ini"));
        assert!(info.ends_with("127.0.0.1"), "{info}");
    }

    #[test]
    fn lun_numbers_follow_tgt() {
        assert_eq!(lun_number(&[0, 1, 0, 0, 0, 0, 0, 0]), 1);
        assert_eq!(lun_number(&[0x40 | 0x01, 0x02, 0, 0, 0, 0, 0, 0]), 0x102);
        assert_eq!(lun_number(&[0x80, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
