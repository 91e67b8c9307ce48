//! Property-based fuzzing of everything tgt-trace reads from outside: the
//! probes' ring-buffer records ([`decode`]), NDJSON traces ([`TraceReader`])
//! and the matcher replaying them ([`replay`]). Nothing may panic, every
//! error must say what happened (for a trace: at which file and line), and
//! what is read must stay consistent.
//!
//! `cargo test -p tgt-trace --test fuzz` runs a modest number of cases per
//! target; `cargo xtask fuzz --cases N` runs N per target in release.
//! `PROPTEST_CASES` overrides the default here too.

use std::{
    collections::BTreeMap,
    io::{self, BufReader, Cursor},
    mem::offset_of,
    path::Path,
    sync::LazyLock,
};

use proptest::prelude::*;
use serde_json::Value;
use tgt_trace::{
    correlate::{self, CommandOutcome, Config, Record},
    decode::{self, DecodeError, decode},
    event::{Event, Waiter},
    reader::{ReadError, TraceReader},
    report::{self, Replayed, replay},
    trace::Line,
};
use tgt_trace_common::{self as abi, EVENT_SIZE, NEXUS_EVENT_SIZE, NEXUS_INFO_LEN, kind};

/// The test's configuration: `default_cases` unless `PROPTEST_CASES` is set
/// (which `ProptestConfig::default()` reads).
fn cases(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

// ---------------------------------------------------------------------------
// Ring-buffer records
// ---------------------------------------------------------------------------

/// `abi::Event` field by field at its `offset_of!` offsets, little-endian:
/// an oracle for `decode`'s unaligned read that shares none of its code.
fn reference_raw(bytes: &[u8]) -> abi::Event {
    macro_rules! field {
        ($name:ident: $ty:ty) => {{
            let at = offset_of!(abi::Event, $name);
            let mut le = [0u8; size_of::<$ty>()];
            le.copy_from_slice(&bytes[at..at + size_of::<$ty>()]);
            <$ty>::from_le_bytes(le)
        }};
    }
    let lun_at = offset_of!(abi::Event, lun);
    abi::Event {
        kind: field!(kind: u8),
        opcode: field!(opcode: u8),
        attribute: field!(attribute: u8),
        function: field!(function: u8),
        pid: field!(pid: u32),
        ts_ns: field!(ts_ns: u64),
        tid: field!(tid: i32),
        value: field!(value: i32),
        itn_id: field!(itn_id: u64),
        tag: field!(tag: u64),
        lun: bytes[lun_at..lun_at + 8].try_into().expect("8 bytes"),
        cookie: field!(cookie: u64),
        tmf_mid: field!(tmf_mid: u64),
        aux: field!(aux: i32),
        _pad: field!(_pad: u32),
    }
}

/// The bytes the probes write for `raw` (and, for NEXUS_CREATE, the
/// session text), placed by `offset_of!`.
fn encode(raw: &abi::Event, nexus: Option<(u32, &[u8])>) -> Vec<u8> {
    let mut bytes = vec![0u8; EVENT_SIZE];
    macro_rules! put {
        ($name:ident) => {{
            let le = raw.$name.to_le_bytes();
            let at = offset_of!(abi::Event, $name);
            bytes[at..at + le.len()].copy_from_slice(&le);
        }};
    }
    put!(kind);
    put!(opcode);
    put!(attribute);
    put!(function);
    put!(pid);
    put!(ts_ns);
    put!(tid);
    put!(value);
    put!(itn_id);
    put!(tag);
    put!(cookie);
    put!(tmf_mid);
    put!(aux);
    put!(_pad);
    let lun_at = offset_of!(abi::Event, lun);
    bytes[lun_at..lun_at + 8].copy_from_slice(&raw.lun);
    if let Some((info_len, info)) = nexus {
        assert_eq!(offset_of!(abi::NexusEvent, event), 0);
        bytes.resize(NEXUS_EVENT_SIZE, 0);
        let at = offset_of!(abi::NexusEvent, info_len);
        bytes[at..at + 4].copy_from_slice(&info_len.to_le_bytes());
        let at = offset_of!(abi::NexusEvent, info);
        bytes[at..at + info.len()].copy_from_slice(info);
    }
    bytes
}

/// What `decode` must make of `bytes`, written from the ABI's table in
/// `tgt-trace-common`.
fn model(bytes: &[u8]) -> Result<Event, DecodeError> {
    let Some(&k) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    let expected = match k {
        kind::NEXUS_CREATE => NEXUS_EVENT_SIZE,
        kind::CMD_QUEUE..=kind::NEXUS_DESTROY | kind::TMF_RECEIVED..=kind::TMF_WALKED => EVENT_SIZE,
        _ => return Err(DecodeError::UnknownKind(k)),
    };
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            kind: k,
            len: bytes.len(),
            expected,
        });
    }
    let raw = reference_raw(bytes);
    let mid = (raw.tmf_mid != 0).then_some(raw.tmf_mid);
    Ok(match k {
        kind::CMD_QUEUE => Event::CmdQueue {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            lun: decode::lun_number(&raw.lun),
            // The LUN bytes in their wire order, as one big-endian number.
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
            tmf_mid: mid,
        },
        kind::CMD_RELEASE => Event::CmdRelease {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            cmd: raw.cookie,
            result: raw.value,
            tmf: mid.map(|mid| Waiter {
                mid,
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
            lun: decode::lun_number(&raw.lun),
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
            let len_at = offset_of!(abi::NexusEvent, info_len);
            let info_len = u32::from_le_bytes(
                bytes[len_at..len_at + 4]
                    .try_into()
                    .expect("4 bytes for info_len"),
            );
            let at = offset_of!(abi::NexusEvent, info);
            let copied = &bytes[at..at + (info_len as usize).min(NEXUS_INFO_LEN)];
            let text = copied.split(|&b| b == 0).next().unwrap_or_default();
            let info = String::from_utf8_lossy(text).into_owned();
            Event::NexusCreate {
                ts_ns: raw.ts_ns,
                pid: raw.pid,
                tid: raw.tid,
                itn_id: raw.itn_id,
                initiator: decode::initiator_name(&info),
                info,
            }
        }
        kind::TMF_RECEIVED => Event::TmfReceived {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
            task: raw.cookie,
            conn: raw.tmf_mid,
            itt: u32::from_ne_bytes(raw.value.to_ne_bytes()),
            iscsi_function: raw.function,
            tag: raw.tag,
            lun: decode::lun_number(&raw.lun),
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
            itt: u32::from_ne_bytes(raw.aux.to_ne_bytes()),
            iscsi_function: raw.function,
            tag: raw.tag,
            response: raw.value.to_le_bytes()[0],
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
        // The ABI table: TMF_COVERS' value is cmd->state, aux its flags.
        kind::TMF_COVERS => Event::TmfCovers {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            mid: raw.cookie,
            tid: raw.tid,
            itn_id: raw.itn_id,
            tag: raw.tag,
            lun: decode::lun_number(&raw.lun),
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
        _ => Event::NexusDestroy {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            itn_id: raw.itn_id,
        },
    })
}

/// `decode` agrees with the model; its errors say what happened and what
/// to do; what it decodes can be recorded and read back.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    let decoded = decode(bytes);
    prop_assert_eq!(&decoded, &model(bytes));
    match decoded {
        Ok(event) => event_reads_back(&event)?,
        Err(err) => {
            let message = err.to_string();
            prop_assert!(
                message.contains("ring buffer") || message.contains("rebuild tgt-trace"),
                "{message}"
            );
        }
    }
    Ok(())
}

/// The first line of the first test trace.
fn header_line() -> &'static [u8] {
    &TRACES[0].lines[0]
}

/// Reads `text` as a trace named `t.ndjson`.
fn reader(text: Vec<u8>, lenient: bool) -> Result<TraceReader, ReadError> {
    TraceReader::new(Box::new(Cursor::new(text)), "t.ndjson".to_owned(), lenient)
}

/// A decoded event, written as a trace line, reads back as itself.
fn event_reads_back(event: &Event) -> Result<(), TestCaseError> {
    let line = Line::Event(event.clone());
    let mut text = header_line().to_vec();
    text.push(b'\n');
    text.extend(serde_json::to_vec(&line).expect("an event serializes"));
    text.push(b'\n');
    let mut r = reader(text, false).expect("the header reads");
    match r.next_line() {
        Some(Ok(read)) => prop_assert_eq!(read, line),
        other => prop_assert!(false, "{event:?} did not read back: {other:?}"),
    }
    prop_assert!(r.next_line().is_none());
    Ok(())
}

fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

fn i32_edge() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(1),
        Just(2),
        Just(abi::TASK_ABORTED),
        Just(-17),
        Just(-22),
        Just(i32::MIN),
        Just(i32::MAX),
        any::<i32>(),
    ]
}

/// Any event the probes could send, of a valid kind.
fn raw_event() -> impl Strategy<Value = abi::Event> {
    (
        (
            prop_oneof![
                kind::CMD_QUEUE..=kind::NEXUS_DESTROY,
                kind::TMF_RECEIVED..=kind::TMF_WALKED
            ],
            any::<u8>(),
            any::<u8>(),
            prop_oneof![
                Just(abi::tmf::ABORT_TASK),
                Just(abi::tmf::LOGICAL_UNIT_RESET),
                any::<u8>()
            ],
            any::<u32>(),
            u64_edge(),
        ),
        (
            i32_edge(),
            i32_edge(),
            u64_edge(),
            u64_edge(),
            any::<[u8; 8]>(),
        ),
        (u64_edge(), u64_edge(), i32_edge(), any::<u32>()),
    )
        .prop_map(
            |(
                (kind, opcode, attribute, function, pid, ts_ns),
                (tid, value, itn_id, tag, lun),
                (cookie, tmf_mid, aux, pad),
            )| abi::Event {
                kind,
                opcode,
                attribute,
                function,
                pid,
                ts_ns,
                tid,
                value,
                itn_id,
                tag,
                lun,
                cookie,
                tmf_mid,
                aux,
                _pad: pad,
            },
        )
}

/// The session text of a NEXUS_CREATE record and its `info_len`.
fn nexus_info() -> impl Strategy<Value = (u32, Vec<u8>)> {
    let text = prop_oneof![
        "[ ]{0,12}Initiator: [a-z0-9.:-]{0,40} alias: [a-z]{0,8}\n[ ]{0,12}Connection: 0\n"
            .prop_map(String::into_bytes),
        "(Initiator:)?[ -~\n\t]{0,80}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..=NEXUS_INFO_LEN),
    ];
    (
        text,
        prop_oneof![
            Just(None),
            Just(Some(0u32)),
            Just(Some(u32::MAX)),
            any::<u32>().prop_map(Some)
        ],
    )
        .prop_map(|(mut text, len)| {
            text.truncate(NEXUS_INFO_LEN);
            let len = len.unwrap_or(text.len() as u32 + 1);
            (len, text)
        })
}

/// A record as the probes write it, and the event it stands for.
fn valid_record() -> impl Strategy<Value = (Vec<u8>, abi::Event)> {
    (raw_event(), nexus_info()).prop_map(|(raw, (info_len, info))| {
        let bytes = if raw.kind == kind::NEXUS_CREATE {
            encode(&raw, Some((info_len, &info)))
        } else {
            encode(&raw, None)
        };
        (bytes, raw)
    })
}

/// One change to a record's bytes.
#[derive(Debug, Clone)]
enum ByteMutation {
    /// XOR one byte (index modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Another kind byte, valid or not.
    Kind(u8),
    /// Cut to this length (modulo the length + 1).
    Truncate(usize),
    /// Trailing bytes, as a ring-buffer record padded to 8 bytes has.
    Extend(Vec<u8>),
    /// The NEXUS_CREATE `info_len` field, if the record is that long.
    InfoLen(u32),
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=u8::MAX).prop_map(|(i, m)| ByteMutation::Flip(i, m)),
        2 => prop_oneof![0..=10u8, any::<u8>()].prop_map(ByteMutation::Kind),
        2 => any::<usize>().prop_map(ByteMutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 0..400).prop_map(ByteMutation::Extend),
        1 => any::<u32>().prop_map(ByteMutation::InfoLen),
    ]
}

fn mutate_bytes(bytes: &mut Vec<u8>, mutation: &ByteMutation) {
    match mutation {
        ByteMutation::Flip(i, mask) => {
            if !bytes.is_empty() {
                let i = i % bytes.len();
                bytes[i] ^= mask;
            }
        }
        ByteMutation::Kind(k) => {
            if let Some(first) = bytes.first_mut() {
                *first = *k;
            }
        }
        ByteMutation::Truncate(len) => {
            let len = len % (bytes.len() + 1);
            bytes.truncate(len);
        }
        ByteMutation::Extend(more) => bytes.extend_from_slice(more),
        ByteMutation::InfoLen(len) => {
            let at = offset_of!(abi::NexusEvent, info_len);
            if bytes.len() >= at + 4 {
                bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_bytes_decode_as_the_abi_says_or_explain(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        check_decode(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_of_a_known_kind_decode_as_the_abi_says(
        k in prop_oneof![kind::CMD_QUEUE..=kind::NEXUS_DESTROY, kind::TMF_RECEIVED..=kind::TMF_WALKED],
        mut bytes in proptest::collection::vec(any::<u8>(), EVENT_SIZE..NEXUS_EVENT_SIZE + 16),
    ) {
        bytes[0] = k;
        check_decode(&bytes)?;
    }

    #[test]
    fn valid_records_round_trip((bytes, raw) in valid_record()) {
        let decoded = decode(&bytes);
        prop_assert!(decoded.is_ok(), "{decoded:?}");
        prop_assert_eq!(&decoded, &model(&bytes));
        // The model reads the fields back as they were written.
        prop_assert_eq!(reference_raw(&bytes), raw);
        check_decode(&bytes)?;
    }

    #[test]
    fn mutated_records_decode_as_the_abi_says_or_explain(
        (mut bytes, _) in valid_record(),
        mutations in proptest::collection::vec(byte_mutation(), 1..6),
    ) {
        for m in &mutations {
            mutate_bytes(&mut bytes, m);
        }
        check_decode(&bytes)?;
    }

    #[test]
    fn initiator_names_parse_without_panic(text in "\\PC{0,200}") {
        if let Some(name) = decode::initiator_name(&text) {
            prop_assert!(!name.is_empty() && !name.contains(char::is_whitespace));
        }
    }
}

// ---------------------------------------------------------------------------
// NDJSON traces
// ---------------------------------------------------------------------------

/// A recorded trace from `tests/data`: its lines without their newlines.
struct Trace {
    lines: Vec<Vec<u8>>,
}

/// Every trace in `tests/data` (files whose first line is a header; the
/// `.expected.ndjson` files are `replay` output).
static TRACES: LazyLock<Vec<Trace>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    paths.sort();
    let traces: Vec<Trace> = paths
        .iter()
        .filter_map(|path| {
            let text = std::fs::read(path).expect("a test trace reads");
            let lines: Vec<Vec<u8>> = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            let is_trace = lines
                .first()
                .is_some_and(|l| matches!(serde_json::from_slice(l), Ok(Line::Header(_))));
            is_trace.then_some(Trace { lines })
        })
        .collect();
    assert!(!traces.is_empty(), "no trace in {}", dir.display());
    traces
});

/// Values that occur in the test traces, so that generated events meet the
/// recorded ones.
struct Pools {
    pids: Vec<u32>,
    itn_ids: Vec<u64>,
    tags: Vec<u64>,
    cookies: Vec<u64>,
    timestamps: Vec<u64>,
}

static POOLS: LazyLock<Pools> = LazyLock::new(|| {
    let mut pools = Pools {
        pids: vec![1],
        itn_ids: vec![0],
        tags: vec![0],
        cookies: vec![0],
        timestamps: vec![0],
    };
    for trace in TRACES.iter() {
        for line in &trace.lines[1..] {
            let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let num = |key: &str| map.get(key).and_then(Value::as_u64);
            if let Some(pid) = num("pid").and_then(|p| u32::try_from(p).ok()) {
                pools.pids.push(pid);
            }
            pools.itn_ids.extend(num("itn_id"));
            pools.tags.extend(num("tag"));
            pools.cookies.extend(num("cmd"));
            pools.cookies.extend(num("mid"));
            pools.timestamps.extend(num("ts_ns"));
        }
    }
    for pool in [
        &mut pools.itn_ids,
        &mut pools.tags,
        &mut pools.cookies,
        &mut pools.timestamps,
    ] {
        pool.sort_unstable();
        pool.dedup();
    }
    pools.pids.sort_unstable();
    pools.pids.dedup();
    pools
});

fn pooled_u64(pool: &'static [u64]) -> impl Strategy<Value = u64> + Clone {
    prop_oneof![4 => proptest::sample::select(pool), 1 => u64_edge()]
}

fn timestamp() -> impl Strategy<Value = u64> + Clone {
    let pool: &'static [u64] = &POOLS.timestamps;
    prop_oneof![
        3 => proptest::sample::select(pool),
        2 => (proptest::sample::select(pool), -1_000_000i64..1_000_000)
            .prop_map(|(ts, d)| ts.saturating_add_signed(d)),
        1 => u64_edge(),
    ]
}

/// Any event, with ids drawn mostly from the recorded ones.
fn event() -> BoxedStrategy<Event> {
    let pid = prop_oneof![
        4 => proptest::sample::select(POOLS.pids.as_slice()),
        1 => any::<u32>()
    ];
    let itn = pooled_u64(&POOLS.itn_ids);
    let tag = pooled_u64(&POOLS.tags);
    let cookie = pooled_u64(&POOLS.cookies);
    let function = prop_oneof![
        Just(abi::tmf::ABORT_TASK),
        Just(abi::tmf::ABORT_TASK_SET),
        Just(abi::tmf::CLEAR_TASK_SET),
        Just(abi::tmf::LOGICAL_UNIT_RESET),
        Just(abi::tmf::CLEAR_ACA),
        any::<u8>(),
    ];
    let lun = prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()];
    let ids = (timestamp(), pid, itn, tag, cookie);
    prop_oneof![
        (
            ids.clone(),
            i32_edge(),
            lun.clone(),
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(
                |((ts_ns, pid, itn_id, tag, cmd), tid, lun, opcode, attribute)| Event::CmdQueue {
                    ts_ns,
                    pid,
                    tid,
                    itn_id,
                    tag,
                    lun,
                    lun_raw: None,
                    opcode,
                    attribute,
                    cmd,
                }
            )
            .boxed(),
        ids.clone()
            .prop_map(|(ts_ns, pid, itn_id, tag, cmd)| Event::CmdPerform {
                ts_ns,
                pid,
                itn_id,
                tag,
                cmd,
            })
            .boxed(),
        (
            ids.clone(),
            i32_edge(),
            proptest::option::of(pooled_u64(&POOLS.cookies))
        )
            .prop_map(
                |((ts_ns, pid, itn_id, tag, cmd), result, tmf_mid)| Event::CmdResult {
                    ts_ns,
                    pid,
                    itn_id,
                    tag,
                    cmd,
                    result,
                    tmf_mid,
                }
            )
            .boxed(),
        (
            ids.clone(),
            i32_edge(),
            proptest::option::of((pooled_u64(&POOLS.cookies), function.clone(), i32_edge()))
        )
            .prop_map(|((ts_ns, pid, itn_id, tag, cmd), result, tmf)| {
                Event::CmdRelease {
                    ts_ns,
                    pid,
                    itn_id,
                    tag,
                    cmd,
                    result,
                    tmf: tmf.map(|(mid, function, busy)| Waiter {
                        mid,
                        function,
                        busy,
                    }),
                }
            })
            .boxed(),
        (ids.clone(), i32_edge(), function.clone(), lun)
            .prop_map(
                |((ts_ns, pid, itn_id, tag, mid), tid, function, lun)| Event::TmfRequest {
                    ts_ns,
                    pid,
                    tid,
                    itn_id,
                    mid,
                    function,
                    tag,
                    lun,
                    lun_raw: None,
                }
            )
            .boxed(),
        (
            ids.clone(),
            prop_oneof![Just(-1), Just(0), Just(1), any::<i32>()]
        )
            .prop_map(|((ts_ns, pid, _, _, mid), ret)| Event::TmfReturn {
                ts_ns,
                pid,
                mid,
                ret,
            })
            .boxed(),
        (
            ids.clone(),
            function,
            i32_edge(),
            proptest::option::of(any::<bool>())
        )
            .prop_map(
                |((ts_ns, pid, _, _, mid), function, result, connection_closed)| {
                    Event::TmfResponse {
                        ts_ns,
                        pid,
                        mid,
                        function,
                        result,
                        connection_closed,
                    }
                }
            )
            .boxed(),
        (ids.clone(), i32_edge(), "\\PC{0,60}")
            .prop_map(
                |((ts_ns, pid, itn_id, _, _), tid, info)| Event::NexusCreate {
                    ts_ns,
                    pid,
                    tid,
                    itn_id,
                    initiator: decode::initiator_name(&info),
                    info,
                }
            )
            .boxed(),
        (ids.clone(), i32_edge())
            .prop_map(|((ts_ns, pid, itn_id, _, _), tid)| {
                Event::NexusDestroy {
                    ts_ns,
                    pid,
                    tid,
                    itn_id,
                }
            })
            .boxed(),
        ids.clone()
            .prop_map(|(ts_ns, pid, ..)| Event::ProcessExit { ts_ns, pid })
            .boxed(),
        (
            ids.clone(),
            (i32_edge(), pooled_u64(&POOLS.cookies), any::<u32>()),
            (0u8..16, any::<u64>(), proptest::option::of(-2i32..3))
        )
            .prop_map(
                |(
                    (ts_ns, pid, itn_id, tag, task),
                    (tid, conn, itt),
                    (iscsi_function, lun_raw, referenced),
                )| Event::TmfReceived {
                    ts_ns,
                    pid,
                    tid,
                    itn_id,
                    task,
                    conn,
                    itt,
                    iscsi_function,
                    tag,
                    lun: decode::lun_number(&lun_raw.to_be_bytes()),
                    lun_raw,
                    referenced,
                }
            )
            .boxed(),
        (
            ids.clone(),
            (i32_edge(), pooled_u64(&POOLS.cookies), any::<u32>()),
            (0u8..16, any::<u8>())
        )
            .prop_map(
                |(
                    (ts_ns, pid, itn_id, tag, task),
                    (tid, conn, itt),
                    (iscsi_function, response),
                )| {
                    Event::TmfSent {
                        ts_ns,
                        pid,
                        tid,
                        itn_id,
                        task,
                        conn,
                        itt,
                        iscsi_function,
                        tag,
                        response,
                    }
                }
            )
            .boxed(),
        (ids.clone(), i32_edge())
            .prop_map(|((ts_ns, pid, itn_id, _, conn), tid)| Event::TmfTxStart {
                ts_ns,
                pid,
                tid,
                itn_id,
                conn,
            })
            .boxed(),
        (ids, i32_edge())
            .prop_map(|((ts_ns, pid, itn_id, _, conn), tid)| Event::ConnClose {
                ts_ns,
                pid,
                tid,
                itn_id,
                conn,
            })
            .boxed(),
    ]
    .boxed()
}

/// What a line of a mutated trace is, as far as the test knows for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// A trace line the reader must return.
    Valid,
    /// Empty or whitespace only: skipped, not counted.
    Blank,
    /// Not a trace line: strict mode must name it, lenient mode count it.
    Malformed,
    /// Changed in a way whose validity the test does not work out.
    Unknown,
}

/// One change to a trace's lines after the header. Indices are taken modulo
/// the number of lines they can refer to.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut a line short strictly inside it: never a complete JSON object.
    Truncate(usize, usize),
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Insert a line that does not start like JSON.
    Junk(usize, Vec<u8>),
    /// Insert JSON that is not a trace line.
    OtherJson(usize, &'static str),
    /// Overwrite one byte of a line with a non-ASCII byte (which mostly
    /// breaks its UTF-8).
    InvalidUtf8(usize, usize, u8),
    /// Insert a line that is empty or whitespace.
    Blank(usize, &'static str),
    /// Give an event line another (valid) timestamp.
    SetTs(usize, u64),
    /// An event's timestamp (or the summary's event count) as a number no
    /// u64 holds.
    HugeNumber(usize, &'static str),
    /// Break an event line's shape: 0 timestamp as a string, 1 kind as a
    /// number, 2 unknown type, 3 no timestamp, 4 an unknown field.
    WrongType(usize, u8),
    /// Some field of a line gets some other JSON value.
    Field(usize, usize, &'static str),
    /// A copy of the header after it.
    SecondHeader(usize),
    /// Insert a valid event line.
    Insert(usize, Event),
    /// The summary line's drops (ring full, unreadable, undecodable).
    Drops(u64, u64, u64),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let i = any::<usize>;
    prop_oneof![
        2 => (i(), i()).prop_map(|(l, at)| Mutation::Truncate(l, at)).boxed(),
        2 => i().prop_map(Mutation::Delete).boxed(),
        2 => i().prop_map(Mutation::Duplicate).boxed(),
        2 => (i(), i()).prop_map(|(a, b)| Mutation::Swap(a, b)).boxed(),
        2 => (
            i(),
            proptest::sample::select(b"#!<x@%&*;:'?\\\0\x01\x7f\xfe\xff".as_slice()),
            proptest::collection::vec(any::<u8>().prop_filter("one line", |&b| b != b'\n'), 0..60)
        )
            .prop_map(|(at, first, rest)| {
                let mut junk = vec![first];
                junk.extend(rest);
                Mutation::Junk(at, junk)
            }).boxed(),
        1 => (
            i(),
            proptest::sample::select(
                &[
                    "[]", "[1,2]", "42", "-1", "1e999", "\"event\"", "null", "true", "{}",
                    "{\"type\":\"event\"}", "{\"type\":\"event\",\"kind\":\"cmd_queue\"}",
                    "{\"type\":null}", "{\"kind\":\"process_exit\",\"ts_ns\":1,\"pid\":1}",
                    "{\"type\":\"event\",\"kind\":\"process_exit\",\"ts_ns\":1,\"pid\":1,\"pid\":2}",
                ][..]
            )
        )
            .prop_map(|(at, json)| Mutation::OtherJson(at, json)).boxed(),
        2 => (i(), i(), 0x80..=0xffu8)
            .prop_map(|(l, at, b)| Mutation::InvalidUtf8(l, at, b)).boxed(),
        1 => (i(), proptest::sample::select(&["", " ", "\t", "\r", "  \t \r"][..]))
            .prop_map(|(at, ws)| Mutation::Blank(at, ws)).boxed(),
        3 => (i(), timestamp()).prop_map(|(l, ts)| Mutation::SetTs(l, ts)).boxed(),
        1 => (
            i(),
            proptest::sample::select(
                &[
                    "18446744073709551616", "99999999999999999999999999", "1e400", "-1",
                    "1.5", "1e3", "-0.0",
                ][..]
            )
        )
            .prop_map(|(l, n)| Mutation::HugeNumber(l, n)).boxed(),
        2 => (i(), 0..5u8).prop_map(|(l, w)| Mutation::WrongType(l, w)).boxed(),
        2 => (
            i(),
            i(),
            proptest::sample::select(
                &[
                    "0", "1", "-1", "255", "256", "4294967295", "4294967296",
                    "18446744073709551615", "9223372036854775808", "-2147483649", "1.5",
                    "\"x\"", "\"event\"", "\"cmd_queue\"", "\"tmf_request\"", "\"summary\"",
                    "null", "true", "[]", "{}", "{\"mid\":1,\"function\":13,\"busy\":1}",
                ][..]
            )
        )
            .prop_map(|(l, k, v)| Mutation::Field(l, k, v)).boxed(),
        1 => i().prop_map(Mutation::SecondHeader).boxed(),
        3 => (i(), event()).prop_map(|(at, e)| Mutation::Insert(at, e)).boxed(),
        1 => (u64_edge(), u64_edge(), u64_edge())
            .prop_map(|(a, b, c)| Mutation::Drops(a, b, c)).boxed(),
    ]
    .boxed()
}

/// A trace's lines as mutated, each with what the test knows about it.
#[derive(Clone)]
struct Mutated {
    lines: Vec<(Vec<u8>, Status)>,
    final_newline: bool,
}

impl Mutated {
    fn new(trace: &Trace) -> Mutated {
        Mutated {
            lines: trace
                .lines
                .iter()
                .map(|l| (l.clone(), Status::Valid))
                .collect(),
            final_newline: true,
        }
    }

    /// An existing line after the header, or None when there is none.
    fn pick(&self, i: usize) -> Option<usize> {
        let body = self.lines.len().checked_sub(1)?;
        (body > 0).then(|| 1 + i % body)
    }

    /// A place to insert a line after the header.
    fn place(&self, i: usize) -> usize {
        1 + i % self.lines.len()
    }

    /// The line as a JSON object, if it is one.
    fn object(&self, at: usize) -> Option<serde_json::Map<String, Value>> {
        match serde_json::from_slice(&self.lines[at].0) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    fn apply(&mut self, m: &Mutation) {
        let is_event =
            |map: &serde_json::Map<String, Value>| map.get("type") == Some(&"event".into());
        match *m {
            Mutation::Truncate(l, at) => {
                if let Some(l) = self.pick(l) {
                    let (line, status) = &mut self.lines[l];
                    if *status != Status::Blank && line.len() >= 2 {
                        line.truncate(1 + at % (line.len() - 1));
                        *status = Status::Malformed;
                    }
                }
            }
            Mutation::Delete(l) => {
                if let Some(l) = self.pick(l) {
                    self.lines.remove(l);
                }
            }
            Mutation::Duplicate(l) => {
                if let Some(l) = self.pick(l) {
                    let copy = self.lines[l].clone();
                    self.lines.insert(l, copy);
                }
            }
            Mutation::Swap(a, b) => {
                if let (Some(a), Some(b)) = (self.pick(a), self.pick(b)) {
                    self.lines.swap(a, b);
                }
            }
            Mutation::Junk(at, ref junk) => {
                let at = self.place(at);
                self.lines.insert(at, (junk.clone(), Status::Malformed));
            }
            Mutation::OtherJson(at, json) => {
                let at = self.place(at);
                self.lines
                    .insert(at, (json.as_bytes().to_vec(), Status::Malformed));
            }
            Mutation::InvalidUtf8(l, at, byte) => {
                if let Some(l) = self.pick(l) {
                    let (line, status) = &mut self.lines[l];
                    if *status != Status::Blank && !line.is_empty() {
                        let at = at % line.len();
                        line[at] = byte;
                        // Not UTF-8 is malformed; a character changed
                        // into another may still be a trace line.
                        let not_utf8 = std::str::from_utf8(line).is_err();
                        *status = if not_utf8 {
                            Status::Malformed
                        } else {
                            Status::Unknown
                        };
                    }
                }
            }
            Mutation::Blank(at, ws) => {
                let at = self.place(at);
                self.lines
                    .insert(at, (ws.as_bytes().to_vec(), Status::Blank));
            }
            Mutation::SetTs(l, ts) => {
                // Not on a malformed line: rewriting it could mend it.
                if let Some(l) = self.pick(l)
                    && self.lines[l].1 != Status::Malformed
                    && let Some(mut map) = self.object(l)
                    && is_event(&map)
                    && map.contains_key("ts_ns")
                {
                    map.insert("ts_ns".to_owned(), ts.into());
                    self.lines[l].0 = serde_json::to_vec(&map).expect("serializes");
                }
            }
            Mutation::HugeNumber(l, number) => {
                if let Some(l) = self.pick(l)
                    && let Some(mut map) = self.object(l)
                {
                    let key = if is_event(&map) { "ts_ns" } else { "events" };
                    if map.get("type") == Some(&"summary".into()) || is_event(&map) {
                        map.insert(key.to_owned(), "@@NUMBER@@".into());
                        let text = serde_json::to_string(&map)
                            .expect("serializes")
                            .replace("\"@@NUMBER@@\"", number);
                        self.lines[l] = (text.into_bytes(), Status::Malformed);
                    }
                }
            }
            Mutation::WrongType(l, which) => {
                if let Some(l) = self.pick(l)
                    && let Some(mut map) = self.object(l)
                    && is_event(&map)
                {
                    match which {
                        0 => {
                            let ts = map.get("ts_ns").cloned().unwrap_or(Value::Null);
                            map.insert("ts_ns".to_owned(), ts.to_string().into());
                        }
                        1 => {
                            map.insert("kind".to_owned(), 42.into());
                        }
                        2 => {
                            map.insert("type".to_owned(), "martian".into());
                        }
                        3 => {
                            map.remove("ts_ns");
                        }
                        _ => {
                            map.insert("bogus".to_owned(), 1.into());
                        }
                    }
                    self.lines[l] = (
                        serde_json::to_vec(&map).expect("serializes"),
                        Status::Malformed,
                    );
                }
            }
            Mutation::Field(l, k, value) => {
                if let Some(l) = self.pick(l)
                    && let Some(mut map) = self.object(l)
                    && !map.is_empty()
                {
                    let key = map.keys().nth(k % map.len()).expect("in range").clone();
                    map.insert(key, serde_json::from_str(value).expect("valid JSON"));
                    self.lines[l] = (
                        serde_json::to_vec(&map).expect("serializes"),
                        Status::Unknown,
                    );
                }
            }
            Mutation::SecondHeader(at) => {
                let at = self.place(at);
                let header = self.lines[0].0.clone();
                self.lines.insert(at, (header, Status::Malformed));
            }
            Mutation::Drops(ring_full, read_failed, decode_errors) => {
                for (line, status) in &mut self.lines {
                    if let Ok(Line::Summary(mut summary)) = serde_json::from_slice(line) {
                        summary.drops = tgt_trace::trace::Drops {
                            ring_full,
                            read_failed,
                            decode_errors,
                            sink_slow: 0,
                            walk_truncated: 0,
                        };
                        *line = serde_json::to_vec(&Line::Summary(summary)).expect("serializes");
                        *status = Status::Valid;
                    }
                }
            }
            Mutation::Insert(at, ref event) => {
                let at = self.place(at);
                let line = serde_json::to_vec(&Line::Event(event.clone())).expect("serializes");
                self.lines.insert(at, (line, Status::Valid));
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (line, _)) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line);
        }
        if self.final_newline {
            out.push(b'\n');
        }
        out
    }

    /// Line numbers (1-based) with the given status.
    fn numbers(&self, status: Status) -> Vec<u64> {
        (1..)
            .zip(&self.lines)
            .filter(|(_, (_, s))| *s == status)
            .map(|(n, _)| n)
            .collect()
    }
}

/// Numbered lines as text, as a failure shows them.
impl std::fmt::Debug for Mutated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Mutated (final newline: {}):", self.final_newline)?;
        for (n, (line, status)) in (1..).zip(&self.lines) {
            writeln!(
                f,
                "{n:4} {status:?}: {}",
                String::from_utf8_lossy(line).escape_debug()
            )?;
        }
        Ok(())
    }
}

fn mutated_trace() -> impl Strategy<Value = Mutated> {
    (
        0..TRACES.len(),
        proptest::collection::vec(mutation(), 0..12),
        any::<bool>(),
    )
        .prop_map(|(t, mutations, drop_final_newline)| {
            let mut mutated = Mutated::new(&TRACES[t]);
            for m in &mutations {
                mutated.apply(m);
            }
            mutated.final_newline = !drop_final_newline;
            mutated
        })
}

/// A reader's error says which file, and for a line which line and that
/// `--lenient` skips it. Reading from memory never fails: an `Io` error
/// would be a line the reader could not handle.
fn check_error(err: &ReadError) -> Result<(), TestCaseError> {
    let message = err.to_string();
    prop_assert!(message.starts_with("t.ndjson"), "{message}");
    match err {
        ReadError::Malformed { line, .. } => {
            let prefix = format!("t.ndjson:{line}: ");
            prop_assert!(message.starts_with(&prefix), "{message}");
            prop_assert!(message.len() > prefix.len() + 20, "{message}");
            prop_assert!(message.contains("--lenient"), "{message}");
            prop_assert!(!message.contains("at line "), "{message}");
        }
        ReadError::NoHeader { .. } => {
            prop_assert!(message.starts_with("t.ndjson:1: "), "{message}");
        }
        ReadError::BadHeader { .. } => {
            // --lenient skips lines, never the header.
            prop_assert!(message.starts_with("t.ndjson:1: "), "{message}");
            prop_assert!(!message.contains("--lenient"), "{message}");
        }
        ReadError::Empty { .. } | ReadError::UnsupportedVersion { .. } => {}
        ReadError::Io { .. } => prop_assert!(false, "reading memory failed: {message}"),
    }
    Ok(())
}

/// Reads every line: the lines read, and the line numbers of the errors.
fn read_all(text: Vec<u8>, lenient: bool) -> Result<(Vec<Line>, Vec<u64>, u64), TestCaseError> {
    let mut r = match reader(text, lenient) {
        Ok(r) => r,
        Err(err) => {
            check_error(&err)?;
            return Err(TestCaseError::fail(format!(
                "the header did not read: {err}"
            )));
        }
    };
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    while let Some(line) = r.next_line() {
        match line {
            Ok(line) => lines.push(line),
            Err(err) => {
                check_error(&err)?;
                match err {
                    ReadError::Malformed { line, .. } => errors.push(line),
                    other => prop_assert!(false, "not a line error: {other}"),
                }
            }
        }
    }
    Ok((lines, errors, r.skipped()))
}

/// Strict and lenient reads of a mutated trace agree with what the test
/// knows of its lines.
fn check_reads(mutated: &Mutated) -> Result<Vec<Line>, TestCaseError> {
    let malformed = mutated.numbers(Status::Malformed);
    let unknown = mutated.numbers(Status::Unknown);
    let valid = mutated.numbers(Status::Valid).len() as u64 - 1;

    let (strict_lines, errors, strict_skipped) = read_all(mutated.bytes(), false)?;
    prop_assert_eq!(strict_skipped, 0);
    // Every malformed line is named, and nothing the test knows is valid.
    for n in &malformed {
        prop_assert!(errors.contains(n), "line {n} was not reported: {errors:?}");
    }
    for n in &errors {
        prop_assert!(
            malformed.contains(n) || unknown.contains(n),
            "line {n} was reported but is valid"
        );
    }
    let read = strict_lines.len() as u64;
    prop_assert!(read >= valid && read <= valid + unknown.len() as u64);

    let (lenient_lines, lenient_errors, skipped) = read_all(mutated.bytes(), true)?;
    prop_assert_eq!(lenient_errors, Vec::<u64>::new());
    prop_assert_eq!(skipped, errors.len() as u64);
    if unknown.is_empty() {
        prop_assert_eq!(skipped, malformed.len() as u64);
    }
    prop_assert_eq!(&lenient_lines, &strict_lines);
    Ok(lenient_lines)
}

/// How `replay` must see a trace whose lines read as `lines`.
fn check_replayed(
    replayed: &Replayed,
    records: &[Record],
    lines: &[Line],
) -> Result<(), TestCaseError> {
    let summary = replayed
        .summary
        .as_ref()
        .expect("replay ends with a summary");
    let c = &summary.counts;
    let events: Vec<&Event> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    prop_assert_eq!(c.events, events.len() as u64);
    prop_assert_eq!(
        replayed.last_ts_ns,
        events.iter().map(|e| e.ts_ns()).max().unwrap_or(0)
    );
    let last_summary = lines.iter().rev().find_map(|l| match l {
        Line::Summary(s) => Some(s),
        _ => None,
    });
    prop_assert_eq!(replayed.complete, last_summary.is_some());
    prop_assert_eq!(
        replayed.drops,
        last_summary.map(|s| s.drops).unwrap_or_default()
    );

    // Every command ends one way.
    prop_assert_eq!(
        c.commands_in,
        c.commands_good
            + c.commands_error
            + c.commands_aborted
            + c.commands_in_flight
            + c.commands_evicted
    );
    let commands = |outcome: CommandOutcome| {
        records
            .iter()
            .filter(|r| matches!(r, Record::Command(cmd) if cmd.outcome == outcome))
            .count() as u64
    };
    prop_assert_eq!(commands(CommandOutcome::ErrorStatus), c.commands_error);
    prop_assert_eq!(commands(CommandOutcome::Aborted), c.commands_aborted);
    prop_assert_eq!(commands(CommandOutcome::InFlight), c.commands_in_flight);
    prop_assert_eq!(commands(CommandOutcome::Evicted), c.commands_evicted);
    prop_assert!(commands(CommandOutcome::Good) <= c.commands_good);

    // Every TMF is one record, counted once by outcome and by function.
    let mut by_outcome = BTreeMap::<String, u64>::new();
    let mut by_function = BTreeMap::<String, BTreeMap<String, u64>>::new();
    let mut orphans = BTreeMap::<String, u64>::new();
    for record in records {
        match record {
            Record::Tmf(t) => {
                let outcome = correlate::outcome_name(t.outcome).to_owned();
                *by_outcome.entry(outcome.clone()).or_default() += 1;
                *by_function
                    .entry(t.function.clone())
                    .or_default()
                    .entry(outcome)
                    .or_default() += 1;
            }
            Record::Orphan(o) => {
                *orphans
                    .entry(correlate::orphan_name(o.kind).to_owned())
                    .or_default() += 1;
            }
            Record::Command(_) => {}
        }
    }
    prop_assert_eq!(by_outcome.values().sum::<u64>(), c.tmfs);
    prop_assert_eq!(&by_outcome, &c.tmfs_by_outcome);
    prop_assert_eq!(&by_function, &c.tmfs_by_function);
    prop_assert!(c.tmfs_evicted <= c.tmfs);
    prop_assert_eq!(&orphans, &c.orphans_by_kind);

    // Histograms hold no more than what they describe.
    let h = &summary.histograms;
    prop_assert!(h.command.count <= c.commands_in);
    prop_assert!(h.command_by_class.values().map(|s| s.count).sum::<u64>() <= h.command.count);
    prop_assert!(h.command_by_lun.values().map(|s| s.count).sum::<u64>() <= h.command.count);
    prop_assert!(h.tmf_by_function.values().map(|s| s.count).sum::<u64>() <= c.tmfs);

    // Everything replay writes is a trace line that reads back as itself.
    let orphan_records: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Orphan(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    let matched = replayed.matched_summary().expect("a summary");
    let mut out: Vec<Line> = records.iter().cloned().map(Line::from).collect();
    out.push(Line::MatchedSummary(Box::new(matched)));
    for line in &out {
        let text = serde_json::to_string(line).expect("serializes");
        let back: Line = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{text} does not read back: {e}")))?;
        prop_assert_eq!(&back, line);
    }
    let report = replayed
        .report_json(orphan_records.clone())
        .expect("a report");
    let text = serde_json::to_string(&report).expect("the report serializes");
    let back: report::ReportJson = serde_json::from_str(&text).expect("the report reads back");
    prop_assert_eq!(back, report);
    let human = report::render_text(replayed, &orphan_records);
    prop_assert!(human.starts_with("commands: "), "{human}");
    Ok(())
}

fn matcher_config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            Just(30_000_000_000u64),
            Just(0),
            Just(1),
            Just(u64::MAX),
            any::<u64>()
        ],
        prop_oneof![
            Just(1_000_000_000u64),
            Just(0),
            Just(u64::MAX),
            any::<u64>()
        ],
        prop_oneof![Just(1_000_000usize), 1..8usize],
        prop_oneof![Just(65_536usize), 1..4usize],
    )
        .prop_map(
            |(tmf_timeout_ns, race_window_ns, max_commands, max_tmfs)| Config {
                tmf_timeout_ns,
                race_window_ns,
                max_commands,
                max_tmfs,
                ..Config::default()
            },
        )
}

/// Replays `text` in both modes and checks what the reader and the matcher
/// make of it; `lines` is what a lenient read returns.
fn check_replay(text: Vec<u8>, lines: &[Line], cfg: Config) -> Result<(), TestCaseError> {
    let mut records = Vec::new();
    let mut r = reader(text.clone(), true).expect("the header reads");
    let replayed = replay(&mut r, cfg.clone(), |rec| records.push(rec.clone()))
        .map_err(|e| TestCaseError::fail(format!("lenient replay failed: {e}")))?;
    check_replayed(&replayed, &records, lines)?;

    // Strict: the same, or the first bad line.
    let first_error = read_all(text.clone(), false)?.1.first().copied();
    let mut strict_records = Vec::new();
    let mut r = reader(text, false).expect("the header reads");
    match (
        replay(&mut r, cfg, |rec| strict_records.push(rec.clone())),
        first_error,
    ) {
        (Ok(strict), None) => {
            prop_assert_eq!(strict.summary, replayed.summary);
            prop_assert_eq!(strict_records, records);
        }
        (Err(err), Some(n)) => {
            check_error(&err)?;
            prop_assert!(
                matches!(err, ReadError::Malformed { line, .. } if line == n),
                "{err}, expected line {n}"
            );
        }
        (result, first_error) => prop_assert!(
            false,
            "strict replay gave {:?}, expected an error at {first_error:?}",
            result.map(|r| r.summary)
        ),
    }
    Ok(())
}

/// Bytes that are mostly trace-like: JSON punctuation, keys, numbers.
fn trace_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        3 => any::<u8>().prop_map(|b| vec![b]),
        2 => proptest::sample::select(
            &[
                "\n", "{", "}", "[", "]", ",", ":", "\"", "\"type\":", "\"event\"",
                "\"kind\":", "\"cmd_queue\"", "\"tmf_request\"", "\"summary\"", "\"ts_ns\":",
                "\"pid\":", "1", "18446744073709551615", "-1", "null", "\\u0000", "\\ud800",
                "\u{fffd}", "\r\n",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    proptest::collection::vec(token, 0..400).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn mutated_traces_read_as_their_lines_say(mutated in mutated_trace()) {
        check_reads(&mutated)?;
    }

    #[test]
    fn mutated_traces_replay_consistently(mutated in mutated_trace(), cfg in matcher_config()) {
        let lines = check_reads(&mutated)?;
        check_replay(mutated.bytes(), &lines, cfg)?;
    }

    #[test]
    fn header_then_arbitrary_bytes_read_and_replay(
        tail in prop_oneof![proptest::collection::vec(any::<u8>(), 0..2000), trace_like_bytes()],
        cfg in matcher_config(),
    ) {
        let mut text = header_line().to_vec();
        text.push(b'\n');
        text.extend(tail);
        let (lines, _, _) = read_all(text.clone(), true)?;
        check_replay(text, &lines, cfg)?;
    }
}

/// One change to the header line.
#[derive(Debug, Clone)]
enum HeaderMutation {
    Delete,
    Truncate(usize),
    InvalidUtf8(usize),
    /// A blank first line before the header.
    BlankFirst(&'static str),
    Version(&'static str),
    Field(usize, &'static str),
    /// The probes' `attached` flags, one bit per probe: the matcher's coverage.
    Attached(u16),
}

fn header_mutation() -> impl Strategy<Value = HeaderMutation> {
    prop_oneof![
        Just(HeaderMutation::Delete),
        any::<usize>().prop_map(HeaderMutation::Truncate),
        any::<usize>().prop_map(HeaderMutation::InvalidUtf8),
        proptest::sample::select(&["", " ", "\t", "\r"][..]).prop_map(HeaderMutation::BlankFirst),
        proptest::sample::select(
            &[
                "0",
                "1",
                "2",
                "3",
                "4",
                "5",
                "6",
                "7",
                "8",
                "9",
                "-1",
                "1.0",
                "\"3\"",
                "null",
                "4294967297",
                "18446744073709551615",
                "18446744073709551616",
            ][..]
        )
        .prop_map(HeaderMutation::Version),
        (
            any::<usize>(),
            proptest::sample::select(&["0", "-1", "\"x\"", "null", "[]", "{}", "true"][..])
        )
            .prop_map(|(k, v)| HeaderMutation::Field(k, v)),
        any::<u16>().prop_map(HeaderMutation::Attached),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn mutated_headers_are_refused_with_a_reason(
        t in 0..TRACES.len(),
        m in header_mutation(),
        cfg in matcher_config(),
    ) {
        let trace = &TRACES[t];
        let mut lines = trace.lines.clone();
        let header = &mut lines[0];
        let mut map = match serde_json::from_slice::<Value>(header) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("the test traces start with a header"),
        };
        // None: must be refused; Some(v): must be read if v.
        let readable: Option<bool> = match m {
            HeaderMutation::Delete => {
                lines.remove(0);
                Some(false)
            }
            HeaderMutation::Truncate(at) => {
                header.truncate(at % header.len());
                Some(false)
            }
            HeaderMutation::InvalidUtf8(at) => {
                let at = at % header.len();
                header[at] = 0xff;
                Some(false)
            }
            HeaderMutation::BlankFirst(ws) => {
                lines.insert(0, ws.as_bytes().to_vec());
                Some(false)
            }
            HeaderMutation::Version(v) => {
                map.insert("schema_version".to_owned(), "@@V@@".into());
                *header = serde_json::to_string(&map)
                    .expect("serializes")
                    .replace("\"@@V@@\"", v)
                    .into_bytes();
                // Every version from the oldest read to the current one.
                Some(v.parse::<u32>().is_ok_and(|n| {
                    (tgt_trace::OLDEST_SCHEMA_VERSION..=tgt_trace::SCHEMA_VERSION).contains(&n)
                }))
            }
            HeaderMutation::Field(k, v) => {
                let key = map.keys().nth(k % map.len()).expect("in range").clone();
                map.insert(key, serde_json::from_str(v).expect("valid JSON"));
                *header = serde_json::to_vec(&map).expect("serializes");
                None
            }
            HeaderMutation::Attached(bits) => {
                if let Some(Value::Array(probes)) = map.get_mut("probes") {
                    for (i, probe) in probes.iter_mut().enumerate() {
                        if let Value::Object(p) = probe {
                            p.insert("attached".to_owned(), (bits & (1 << (i % 16)) != 0).into());
                        }
                    }
                }
                *header = serde_json::to_vec(&map).expect("serializes");
                Some(true)
            }
        };
        let text = lines.join(&b'\n');
        let lenient = cfg.max_tmfs % 2 == 0;
        match reader(text.clone(), lenient) {
            Ok(_) => {
                prop_assert_ne!(readable, Some(false), "a broken header was read");
                // Whatever the header says, the trace replays consistently.
                let (lines, _, _) = read_all(text.clone(), true)?;
                check_replay(text, &lines, cfg)?;
            }
            Err(err) => {
                prop_assert_ne!(readable, Some(true), "{}", err);
                check_error(&err)?;
                if let HeaderMutation::Version(v) = m {
                    // The version found, or that there is none.
                    prop_assert_eq!(
                        v.parse::<u64>().ok(),
                        match &err {
                            ReadError::UnsupportedVersion { found, .. } => Some(*found),
                            _ => None,
                        },
                        "{}",
                        err
                    );
                }
                if !matches!(err, ReadError::UnsupportedVersion { .. }) {
                    prop_assert!(err.to_string().starts_with("t.ndjson:1: "), "{err}");
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_a_trace_or_refused_with_a_reason(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..2000), trace_like_bytes()],
        lenient in any::<bool>(),
    ) {
        match reader(bytes.clone(), lenient) {
            Ok(_) => {
                let (_, errors, skipped) = read_all(bytes, lenient)?;
                if lenient {
                    prop_assert!(errors.is_empty());
                } else {
                    prop_assert_eq!(skipped, 0);
                }
            }
            Err(err) => {
                check_error(&err)?;
                prop_assert_eq!(matches!(err, ReadError::Empty { .. }), bytes.is_empty(), "{}", err);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions: inputs the properties above found
// ---------------------------------------------------------------------------

/// A trace: the test header, then `body`.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut text = header_line().to_vec();
    text.push(b'\n');
    text.extend_from_slice(body);
    text
}

const EVENT: &str = r#"{"type":"event","kind":"process_exit","ts_ns":5,"pid":1}"#;

/// The malformed line's error in strict mode, and what lenient mode skips.
fn strict_error_and_lenient_skips(text: &[u8]) -> (String, u64) {
    let mut strict = reader(text.to_vec(), false).expect("the header reads");
    let err = strict
        .find_map(Result::err)
        .expect("strict mode reports the line");
    assert!(matches!(err, ReadError::Malformed { .. }), "{err}");
    let mut lenient = reader(text.to_vec(), true).expect("the header reads");
    let mut events = 0;
    let replayed =
        replay(&mut lenient, Config::default(), |_| {}).expect("lenient replay reads on");
    if let Some(summary) = &replayed.summary {
        events = summary.counts.events;
    }
    assert_eq!(events, 1, "the good line after the bad one is read");
    (err.to_string(), replayed.skipped)
}

#[test]
fn regression_a_line_that_is_not_utf8_is_a_malformed_line_not_a_read_failure() {
    // Was: "cannot read t.ndjson: stream did not contain valid UTF-8", with no
    // line number, and fatal even with --lenient.
    let (message, skipped) = strict_error_and_lenient_skips(&with_header(
        &[b"{\xff\n", EVENT.as_bytes(), b"\n"].concat(),
    ));
    assert!(
        message.starts_with("t.ndjson:2: not a trace line: not UTF-8 text")
            && message.contains("--lenient"),
        "{message}"
    );
    assert_eq!(skipped, 1);
}

#[test]
fn regression_a_header_that_is_not_utf8_is_not_a_header() {
    // Was: "cannot read t.ndjson: stream did not contain valid UTF-8".
    let mut text = header_line().to_vec();
    text[0] = 0xff;
    let err = reader(text, true).err().expect("refused");
    assert!(matches!(err, ReadError::NoHeader { .. }), "{err}");
    assert!(err.to_string().starts_with("t.ndjson:1: "), "{err}");
}

#[test]
fn regression_a_blank_first_line_is_not_an_empty_file() {
    // Was: "t.ndjson is empty" for a file with a header on its second line.
    let mut text = b"\n".to_vec();
    text.extend_from_slice(header_line());
    let err = reader(text, false).err().expect("refused");
    assert!(matches!(err, ReadError::NoHeader { .. }), "{err}");
    assert!(err.to_string().starts_with("t.ndjson:1: "), "{err}");
}

#[test]
fn regression_a_malformed_line_is_not_described_by_serde_s_line_numbers() {
    // Was: "t.ndjson:2: EOF while parsing an object at line 2 column 0": serde
    // counts lines within the one line it saw, after its newline.
    let (message, _) = strict_error_and_lenient_skips(&with_header(
        format!("{{\"type\":\"event\"\n{EVENT}\n").as_bytes(),
    ));
    assert_eq!(
        message,
        "t.ndjson:2: not a trace line (expected one JSON object): EOF while parsing an object; \
         pass --lenient to skip bad lines (they are counted)"
    );
    let (message, _) = strict_error_and_lenient_skips(&with_header(
        format!("{{\"type\":\"martian\"}}\n{EVENT}\n").as_bytes(),
    ));
    assert!(
        message.starts_with("t.ndjson:2: not a trace line: unknown variant `martian`")
            && message
                .ends_with("at column 17; pass --lenient to skip bad lines (they are counted)"),
        "{message}"
    );
}

/// The test header with `schema_version` as `version`, or without it.
fn header_with_version(version: Option<&str>) -> Vec<u8> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(header_line()) else {
        unreachable!("the test traces start with a header");
    };
    map.remove("schema_version");
    if let Some(v) = version {
        map.insert(
            "schema_version".to_owned(),
            serde_json::from_str(v).expect("JSON"),
        );
    }
    serde_json::to_vec(&map).expect("serializes")
}

#[test]
fn regression_a_header_without_a_numeric_version_does_not_claim_version_0() {
    // Was: "schema version 0 is not supported ...; read it with the tgt-trace
    // version that wrote it".
    for version in [Some("\"3\""), Some("-1"), Some("null"), None] {
        let err = reader(header_with_version(version), false)
            .err()
            .expect("refused");
        assert!(matches!(err, ReadError::BadHeader { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("t.ndjson:1: the header is damaged: its schema_version is missing"),
            "{err}"
        );
    }
}

#[test]
fn regression_a_damaged_header_does_not_suggest_lenient() {
    // Was: "t.ndjson:1: missing field `ring_bytes`; pass --lenient to skip bad
    // lines", but --lenient never skips the header.
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(header_line()) else {
        unreachable!("the test traces start with a header");
    };
    map.remove("ring_bytes");
    let err = reader(serde_json::to_vec(&map).expect("serializes"), true)
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(matches!(err, ReadError::BadHeader { .. }), "{err}");
    assert!(
        message.starts_with("t.ndjson:1: the header is damaged: missing field `ring_bytes`")
            && !message.contains("--lenient"),
        "{message}"
    );
}

#[test]
fn regression_an_overlong_line_is_malformed_and_not_held_in_memory() {
    // Was: the whole line read into memory, however long (a file or pipe of
    // garbage without a newline exhausts memory), then a JSON error.
    use std::io::Read as _;
    let long = tgt_trace::reader::MAX_LINE_BYTES as u64 + (1 << 20);
    let input = || {
        Cursor::new(with_header(b""))
            .chain(io::repeat(b'x').take(long))
            .chain(Cursor::new(format!("\n{EVENT}\n").into_bytes()))
    };
    let mut strict = TraceReader::new(
        Box::new(BufReader::new(input())),
        "t.ndjson".to_owned(),
        false,
    )
    .expect("the header reads");
    let err = strict.next_line().expect("a line").expect_err("too long");
    assert!(
        err.to_string()
            .starts_with("t.ndjson:2: not a trace line: longer than 64 MiB"),
        "{err}"
    );
    assert!(matches!(strict.next_line(), Some(Ok(Line::Event(_)))));
    assert!(strict.next_line().is_none());
    // A header that long is not a header.
    let err = TraceReader::new(
        Box::new(BufReader::new(io::repeat(b'{').take(long))),
        "t.ndjson".to_owned(),
        true,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, ReadError::NoHeader { .. }), "{err}");
}

#[test]
fn regression_huge_drop_counts_in_the_summary_line_do_not_overflow() {
    // Was: "attempt to add with overflow" in Drops::total (a debug build's
    // `report`), and in release a total that wraps to 0: `check` then saw no
    // drops in a trace that lost everything.
    let summary = r#"{"type":"summary","events":1,"drops":{"ring_full":18446744073709551615,"read_failed":1,"decode_errors":0},"duration_ns":1,"stopped_by":"signal"}"#;
    let mut r = reader(
        with_header(format!("{EVENT}\n{summary}\n").as_bytes()),
        false,
    )
    .expect("the header reads");
    let replayed = replay(&mut r, Config::default(), |_| {}).expect("replays");
    assert_eq!(replayed.drops.total(), u64::MAX);
    let text = report::render_text(&replayed, &[]);
    assert!(
        text.contains("drops: 18446744073709551615 (ring full 18446744073709551615, unreadable 1,"),
        "{text}"
    );
}
