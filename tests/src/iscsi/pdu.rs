//! iSCSI PDUs on the wire (RFC 7143 §11): a 48-byte Basic Header Segment and
//! a data segment padded to a multiple of 4 bytes. Digests are never
//! negotiated, and AHS is accepted on receive but never sent.

use std::io::{self, Read, Write};

use super::Error;

pub const BHS_LEN: usize = 48;

/// The task tag meaning "no task" (RFC 7143 §11.1 ITT/TTT 0xffffffff).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Largest data segment the 24-bit DataSegmentLength can describe.
pub const MAX_DATA_SEGMENT: usize = (1 << 24) - 1;

/// Opcodes without the I bit (RFC 7143 §11.1.1).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MANAGEMENT: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MANAGEMENT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

const IMMEDIATE: u8 = 0x40;
const FINAL: u8 = 0x80;

/// Bits of byte 1 of a SCSI Command (RFC 7143 §11.3.1).
const CMD_READ: u8 = 0x40;
const CMD_WRITE: u8 = 0x20;

/// Bits of byte 1 of a SCSI Data-In (RFC 7143 §11.7.1).
const DATA_IN_STATUS: u8 = 0x01;
const RESIDUAL_UNDERFLOW: u8 = 0x02;
const RESIDUAL_OVERFLOW: u8 = 0x04;

/// Bits of byte 1 of a Login Request/Response (RFC 7143 §11.12.1).
const LOGIN_TRANSIT: u8 = 0x80;
const LOGIN_CONTINUE: u8 = 0x40;

/// Login stages (CSG/NSG).
pub const SECURITY_NEGOTIATION: u8 = 0;
pub const OPERATIONAL_NEGOTIATION: u8 = 1;
pub const FULL_FEATURE_PHASE: u8 = 3;

/// One PDU: its BHS (with DataSegmentLength filled in on encode) and its
/// unpadded data segment.
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("itt", &format_args!("{:#x}", self.itt()))
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl Pdu {
    pub fn new(opcode: u8, immediate: bool) -> Pdu {
        let mut bhs = [0; BHS_LEN];
        bhs[0] = opcode | if immediate { IMMEDIATE } else { 0 };
        Pdu {
            bhs,
            data: Vec::new(),
        }
    }

    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    pub fn immediate(&self) -> bool {
        self.bhs[0] & IMMEDIATE != 0
    }

    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    pub fn lun(&self) -> [u8; 8] {
        let mut lun = [0; 8];
        lun.copy_from_slice(&self.bhs[8..16]);
        lun
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[offset],
            self.bhs[offset + 1],
            self.bhs[offset + 2],
            self.bhs[offset + 3],
        ])
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.bhs[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
    }

    /// DataSegmentLength as written in the header (bytes 5..8).
    pub fn data_segment_length(&self) -> usize {
        usize::from(self.bhs[5]) << 16 | usize::from(self.bhs[6]) << 8 | usize::from(self.bhs[7])
    }

    /// The wire form: header, data, zero padding to 4 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.data.len() > MAX_DATA_SEGMENT {
            return Err(Error::Protocol(format!(
                "data segment of {} bytes does not fit DataSegmentLength",
                self.data.len()
            )));
        }
        let mut wire = Vec::with_capacity(BHS_LEN + padded(self.data.len()));
        wire.extend_from_slice(&self.bhs);
        wire[4] = 0;
        wire[5..8].copy_from_slice(&(self.data.len() as u32).to_be_bytes()[1..]);
        wire.extend_from_slice(&self.data);
        wire.resize(BHS_LEN + padded(self.data.len()), 0);
        Ok(wire)
    }

    /// Splits one PDU off the front of `buf`, or says how many more bytes
    /// are needed before it can.
    pub fn decode(buf: &[u8]) -> Decoded {
        if buf.len() < BHS_LEN {
            return Decoded::NeedMore;
        }
        let ahs_len = usize::from(buf[4]) * 4;
        let data_len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        let total = BHS_LEN + ahs_len + padded(data_len);
        if buf.len() < total {
            return Decoded::NeedMore;
        }
        let mut bhs = [0; BHS_LEN];
        bhs.copy_from_slice(&buf[..BHS_LEN]);
        let data_start = BHS_LEN + ahs_len;
        Decoded::Pdu {
            pdu: Pdu {
                bhs,
                data: buf[data_start..data_start + data_len].to_vec(),
            },
            consumed: total,
        }
    }

    /// Reads exactly one PDU; for the login phase, where nothing else is in
    /// flight.
    pub fn read_from(reader: &mut impl Read) -> io::Result<Pdu> {
        let mut bhs = [0; BHS_LEN];
        reader.read_exact(&mut bhs)?;
        let ahs_len = usize::from(bhs[4]) * 4;
        let data_len = usize::from(bhs[5]) << 16 | usize::from(bhs[6]) << 8 | usize::from(bhs[7]);
        let mut rest = vec![0; ahs_len + padded(data_len)];
        reader.read_exact(&mut rest)?;
        Ok(Pdu {
            bhs,
            data: rest[ahs_len..ahs_len + data_len].to_vec(),
        })
    }

    pub fn write_to(&self, writer: &mut impl Write) -> Result<(), Error> {
        let wire = self.encode()?;
        writer
            .write_all(&wire)
            .map_err(|e| Error::io("sending a PDU", e))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    NeedMore,
    Pdu { pdu: Pdu, consumed: usize },
}

pub fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// The 8-byte LUN field: peripheral device addressing for LUNs below 256
/// (`00 nn`), flat space addressing (`4x xx`) up to 16383, as SAM-5 §4.7
/// and tgtd expect.
pub fn encode_lun(lun: u16) -> Result<[u8; 8], Error> {
    let mut field = [0; 8];
    match lun {
        0..=0xff => field[1] = lun as u8,
        0x100..=0x3fff => {
            field[0] = 0x40 | (lun >> 8) as u8;
            field[1] = lun as u8;
        }
        _ => {
            return Err(Error::Protocol(format!(
                "LUN {lun} needs more than single-level addressing"
            )));
        }
    }
    Ok(field)
}

/// The inverse of [`encode_lun`]; `None` for other addressing methods.
pub fn decode_lun(field: [u8; 8]) -> Option<u16> {
    if field[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match field[0] >> 6 {
        0b00 if field[0] == 0 => Some(u16::from(field[1])),
        0b01 => Some(u16::from(field[0] & 0x3f) << 8 | u16::from(field[1])),
        _ => None,
    }
}

/// Text keys as `key=value` strings, each ending in NUL (RFC 7143 §6.1).
pub fn encode_text(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut text = Vec::new();
    for (key, value) in pairs {
        text.extend_from_slice(key.as_bytes());
        text.push(b'=');
        text.extend_from_slice(value.as_bytes());
        text.push(0);
    }
    text
}

pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, Error> {
    data.split(|&b| b == 0)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let pair = std::str::from_utf8(pair)
                .map_err(|_| Error::Protocol(format!("text key is not UTF-8: {pair:?}")))?;
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::Protocol(format!("text key without '=': {pair:?}")))?;
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Fields of a login request (RFC 7143 §11.12).
pub struct LoginRequest {
    pub transit: bool,
    pub current_stage: u8,
    pub next_stage: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub text: Vec<u8>,
}

impl LoginRequest {
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(opcode::LOGIN, true);
        pdu.bhs[1] = if self.transit { LOGIN_TRANSIT } else { 0 }
            | (self.current_stage & 3) << 2
            | if self.transit { self.next_stage & 3 } else { 0 };
        // Version-max and version-min: 0x00, the only version there is.
        pdu.bhs[8..14].copy_from_slice(&self.isid);
        pdu.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        pdu.set_u32(16, self.itt);
        pdu.bhs[20..22].copy_from_slice(&self.cid.to_be_bytes());
        pdu.set_u32(24, self.cmd_sn);
        pdu.set_u32(28, self.exp_stat_sn);
        pdu.data = self.text.clone();
        pdu
    }
}

pub struct ScsiCommandPdu<'a> {
    pub lun: [u8; 8],
    pub itt: u32,
    pub attr: u8,
    pub read: bool,
    pub write: bool,
    /// No unsolicited Data-Out follows.
    pub final_: bool,
    pub expected_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: &'a [u8],
    pub immediate_data: Vec<u8>,
}

impl ScsiCommandPdu<'_> {
    pub fn to_pdu(&self) -> Result<Pdu, Error> {
        if self.cdb.is_empty() || self.cdb.len() > 16 {
            return Err(Error::Protocol(format!(
                "a CDB of {} bytes needs an AHS, which this initiator does not send",
                self.cdb.len()
            )));
        }
        let mut pdu = Pdu::new(opcode::SCSI_COMMAND, false);
        pdu.bhs[1] = if self.final_ { FINAL } else { 0 }
            | if self.read { CMD_READ } else { 0 }
            | if self.write { CMD_WRITE } else { 0 }
            | (self.attr & 7);
        pdu.bhs[8..16].copy_from_slice(&self.lun);
        pdu.set_u32(16, self.itt);
        pdu.set_u32(20, self.expected_length);
        pdu.set_u32(24, self.cmd_sn);
        pdu.set_u32(28, self.exp_stat_sn);
        pdu.bhs[32..32 + self.cdb.len()].copy_from_slice(self.cdb);
        pdu.data = self.immediate_data.clone();
        Ok(pdu)
    }
}

pub struct DataOutPdu {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub final_: bool,
    pub data: Vec<u8>,
}

impl DataOutPdu {
    pub fn to_pdu(self) -> Pdu {
        let mut pdu = Pdu::new(opcode::DATA_OUT, false);
        pdu.bhs[1] = if self.final_ { FINAL } else { 0 };
        pdu.bhs[8..16].copy_from_slice(&self.lun);
        pdu.set_u32(16, self.itt);
        pdu.set_u32(20, self.ttt);
        pdu.set_u32(28, self.exp_stat_sn);
        pdu.set_u32(36, self.data_sn);
        pdu.set_u32(40, self.buffer_offset);
        pdu.data = self.data;
        pdu
    }
}

pub struct TaskManagementPdu {
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub referenced_itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
}

impl TaskManagementPdu {
    /// Always immediate: a TMF must overtake the commands it manages.
    pub fn to_pdu(&self) -> Pdu {
        let mut pdu = Pdu::new(opcode::TASK_MANAGEMENT, true);
        pdu.bhs[1] = FINAL | (self.function & 0x7f);
        pdu.bhs[8..16].copy_from_slice(&self.lun);
        pdu.set_u32(16, self.itt);
        pdu.set_u32(20, self.referenced_itt);
        pdu.set_u32(24, self.cmd_sn);
        pdu.set_u32(28, self.exp_stat_sn);
        pdu.set_u32(32, self.ref_cmd_sn);
        pdu
    }
}

/// A Logout Request closing the whole session (reason 0).
pub fn logout_pdu(itt: u32, cid: u16, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
    let mut pdu = Pdu::new(opcode::LOGOUT, true);
    pdu.bhs[1] = FINAL;
    pdu.set_u32(16, itt);
    pdu.bhs[20..22].copy_from_slice(&cid.to_be_bytes());
    pdu.set_u32(24, cmd_sn);
    pdu.set_u32(28, exp_stat_sn);
    pdu
}

/// The NOP-Out that answers a target's NOP-In ping (RFC 7143 §11.18).
pub fn nop_out_reply(nop_in: &Pdu, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
    let mut pdu = Pdu::new(opcode::NOP_OUT, true);
    pdu.bhs[1] = FINAL;
    pdu.bhs[8..16].copy_from_slice(&nop_in.bhs[8..16]);
    pdu.set_u32(16, RESERVED_TAG);
    pdu.set_u32(20, nop_in.u32_at(20));
    pdu.set_u32(24, cmd_sn);
    pdu.set_u32(28, exp_stat_sn);
    pdu.data = nop_in.data.clone();
    pdu
}

/// A target PDU, decoded into the fields this initiator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPdu {
    LoginResponse {
        transit: bool,
        continue_: bool,
        current_stage: u8,
        next_stage: u8,
        tsih: u16,
        status_class: u8,
        status_detail: u8,
        text: Vec<(String, String)>,
    },
    ScsiResponse {
        response: u8,
        status: u8,
        residual: Residual,
        sense: Vec<u8>,
    },
    DataIn {
        ttt: u32,
        data_sn: u32,
        buffer_offset: u32,
        /// Set when the S bit carries the command's status.
        status: Option<u8>,
        residual: Residual,
        data: Vec<u8>,
    },
    R2t {
        lun: [u8; 8],
        ttt: u32,
        r2t_sn: u32,
        buffer_offset: u32,
        desired_length: u32,
    },
    TaskManagementResponse {
        response: u8,
    },
    LogoutResponse {
        response: u8,
    },
    NopIn {
        ttt: u32,
    },
    Reject {
        reason: u8,
        /// The ITT of the PDU that was rejected, from its header in the data.
        rejected_itt: Option<u32>,
    },
    AsyncMessage {
        event: u8,
    },
    Other,
}

/// Residual count as the O and U bits report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Underflow(u32),
    Overflow(u32),
}

impl Residual {
    fn from(flags: u8, count: u32) -> Residual {
        if flags & RESIDUAL_UNDERFLOW != 0 {
            Residual::Underflow(count)
        } else if flags & RESIDUAL_OVERFLOW != 0 {
            Residual::Overflow(count)
        } else {
            Residual::None
        }
    }
}

impl Pdu {
    /// StatSN, ExpCmdSN, MaxCmdSN: every target PDU has them at 24, 28, 32.
    pub fn stat_sn(&self) -> u32 {
        self.u32_at(24)
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(28)
    }

    pub fn max_cmd_sn(&self) -> u32 {
        self.u32_at(32)
    }

    /// Whether this target PDU consumes a StatSN (and so moves ExpStatSN).
    pub fn carries_status(&self) -> bool {
        match self.opcode() {
            opcode::DATA_IN => self.flags() & DATA_IN_STATUS != 0,
            opcode::R2T => false,
            // RFC 7143 advances StatSN on a NOP-In that answers a ping, but
            // tgtd 1.0.85 does not (iscsi_noop_in_tx_start); assuming it
            // never does can only make ExpStatSN lag, never run ahead.
            opcode::NOP_IN => false,
            _ => true,
        }
    }

    pub fn parse_target(&self) -> Result<TargetPdu, Error> {
        let flags = self.flags();
        Ok(match self.opcode() {
            opcode::LOGIN_RESPONSE => TargetPdu::LoginResponse {
                transit: flags & LOGIN_TRANSIT != 0,
                continue_: flags & LOGIN_CONTINUE != 0,
                current_stage: (flags >> 2) & 3,
                next_stage: flags & 3,
                tsih: u16::from_be_bytes([self.bhs[14], self.bhs[15]]),
                status_class: self.bhs[36],
                status_detail: self.bhs[37],
                text: parse_text(&self.data)?,
            },
            opcode::SCSI_RESPONSE => TargetPdu::ScsiResponse {
                response: self.bhs[2],
                status: self.bhs[3],
                residual: Residual::from(flags, self.u32_at(44)),
                sense: match self.data.get(..2) {
                    Some(len) => {
                        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                        self.data
                            .get(2..2 + len)
                            .unwrap_or(&self.data[2..])
                            .to_vec()
                    }
                    None => Vec::new(),
                },
            },
            opcode::DATA_IN => {
                let has_status = flags & DATA_IN_STATUS != 0;
                TargetPdu::DataIn {
                    ttt: self.u32_at(20),
                    data_sn: self.u32_at(36),
                    buffer_offset: self.u32_at(40),
                    status: has_status.then_some(self.bhs[3]),
                    residual: if has_status {
                        Residual::from(flags, self.u32_at(44))
                    } else {
                        Residual::None
                    },
                    data: self.data.clone(),
                }
            }
            opcode::R2T => TargetPdu::R2t {
                lun: self.lun(),
                ttt: self.u32_at(20),
                r2t_sn: self.u32_at(36),
                buffer_offset: self.u32_at(40),
                desired_length: self.u32_at(44),
            },
            opcode::TASK_MANAGEMENT_RESPONSE => TargetPdu::TaskManagementResponse {
                response: self.bhs[2],
            },
            opcode::LOGOUT_RESPONSE => TargetPdu::LogoutResponse {
                response: self.bhs[2],
            },
            opcode::NOP_IN => TargetPdu::NopIn {
                ttt: self.u32_at(20),
            },
            opcode::REJECT => TargetPdu::Reject {
                reason: self.bhs[2],
                rejected_itt: self
                    .data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            },
            opcode::ASYNC_MESSAGE => TargetPdu::AsyncMessage {
                event: self.bhs[36],
            },
            _ => TargetPdu::Other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(wire: &[u8]) -> Pdu {
        match Pdu::decode(wire) {
            Decoded::Pdu { pdu, consumed } => {
                assert_eq!(consumed, wire.len());
                pdu
            }
            Decoded::NeedMore => panic!("a whole PDU did not decode"),
        }
    }

    #[test]
    fn data_segment_is_padded_to_four_bytes_and_length_is_unpadded() {
        let mut pdu = Pdu::new(opcode::NOP_OUT, true);
        pdu.data = vec![1, 2, 3, 4, 5];
        let wire = pdu.encode().expect("encodes");
        assert_eq!(wire.len(), 48 + 8);
        assert_eq!(&wire[4..8], &[0, 0, 0, 5]);
        assert_eq!(&wire[48..], &[1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(decode_one(&wire).data, pdu.data);
    }

    #[test]
    fn decode_waits_for_the_whole_pdu_and_skips_ahs() {
        let mut wire = vec![0u8; 48];
        wire[0] = opcode::SCSI_RESPONSE;
        wire[4] = 1; // one 4-byte word of AHS
        wire[7] = 2;
        wire.extend_from_slice(&[0xaa; 4]);
        wire.extend_from_slice(&[7, 8]);
        assert_eq!(Pdu::decode(&wire), Decoded::NeedMore);
        wire.extend_from_slice(&[0, 0]);
        wire.extend_from_slice(&[0x99; 3]); // the next PDU's first bytes
        match Pdu::decode(&wire) {
            Decoded::Pdu { pdu, consumed } => {
                assert_eq!(consumed, 48 + 4 + 4);
                assert_eq!(pdu.data, vec![7, 8]);
            }
            Decoded::NeedMore => panic!("should decode"),
        }
    }

    #[test]
    fn lun_uses_peripheral_then_flat_addressing() {
        assert_eq!(encode_lun(0).ok(), Some([0; 8]));
        assert_eq!(encode_lun(1).ok(), Some([0, 1, 0, 0, 0, 0, 0, 0]));
        assert_eq!(encode_lun(255).ok(), Some([0, 0xff, 0, 0, 0, 0, 0, 0]));
        assert_eq!(encode_lun(256).ok(), Some([0x41, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(
            encode_lun(0x3fff).ok(),
            Some([0x7f, 0xff, 0, 0, 0, 0, 0, 0])
        );
        assert!(encode_lun(0x4000).is_err());
        for lun in [0, 1, 200, 255, 256, 1000, 0x3fff] {
            assert_eq!(encode_lun(lun).ok().and_then(decode_lun), Some(lun));
        }
        assert_eq!(decode_lun([0x80, 1, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn text_round_trips_and_rejects_garbage() {
        let text = encode_text(&[
            ("InitiatorName", "iqn.x:y".to_owned()),
            ("AuthMethod", "None".to_owned()),
        ]);
        assert_eq!(text, b"InitiatorName=iqn.x:y\0AuthMethod=None\0".to_vec());
        let parsed = parse_text(&text).expect("parses");
        assert_eq!(
            parsed,
            vec![
                ("InitiatorName".to_owned(), "iqn.x:y".to_owned()),
                ("AuthMethod".to_owned(), "None".to_owned()),
            ]
        );
        // Values may contain '='; only the first one splits.
        assert_eq!(
            parse_text(b"TargetAlias=a=b\0").expect("parses"),
            vec![("TargetAlias".to_owned(), "a=b".to_owned())]
        );
        assert!(parse_text(b"NoEquals\0").is_err());
    }

    #[test]
    fn scsi_command_layout_matches_rfc_7143_11_3() {
        let cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0];
        let pdu = ScsiCommandPdu {
            lun: [0, 3, 0, 0, 0, 0, 0, 0],
            itt: 0x1234_5678,
            attr: 2,
            read: true,
            write: false,
            final_: true,
            expected_length: 1024,
            cmd_sn: 7,
            exp_stat_sn: 9,
            cdb: &cdb,
            immediate_data: Vec::new(),
        }
        .to_pdu()
        .expect("builds");
        let wire = pdu.encode().expect("encodes");
        let mut expected = vec![0u8; 48];
        expected[0] = 0x01;
        expected[1] = 0x80 | 0x40 | 2;
        expected[9] = 3;
        expected[16..20].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        expected[20..24].copy_from_slice(&[0, 0, 4, 0]);
        expected[27] = 7;
        expected[31] = 9;
        expected[32..42].copy_from_slice(&cdb);
        assert_eq!(wire, expected);
        assert!(
            ScsiCommandPdu {
                cdb: &[0; 17],
                ..ScsiCommandPdu {
                    lun: [0; 8],
                    itt: 0,
                    attr: 0,
                    read: false,
                    write: false,
                    final_: true,
                    expected_length: 0,
                    cmd_sn: 0,
                    exp_stat_sn: 0,
                    cdb: &[],
                    immediate_data: Vec::new(),
                }
            }
            .to_pdu()
            .is_err()
        );
    }

    #[test]
    fn task_management_layout_matches_rfc_7143_11_5() {
        let pdu = TaskManagementPdu {
            function: 1,
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            itt: 0x10,
            referenced_itt: 0xdead_beef,
            cmd_sn: 5,
            exp_stat_sn: 6,
            ref_cmd_sn: 4,
        }
        .to_pdu();
        let wire = pdu.encode().expect("encodes");
        assert_eq!(wire[0], 0x42, "opcode 0x02 with the I bit");
        assert_eq!(wire[1], 0x81, "F bit and function");
        assert_eq!(&wire[8..10], &[0, 1]);
        assert_eq!(&wire[16..20], &[0, 0, 0, 0x10]);
        assert_eq!(&wire[20..24], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&wire[24..36], &[0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 4]);
        assert_eq!(&wire[36..48], &[0; 12]);
    }

    #[test]
    fn login_request_layout_matches_rfc_7143_11_12() {
        let pdu = LoginRequest {
            transit: true,
            current_stage: OPERATIONAL_NEGOTIATION,
            next_stage: FULL_FEATURE_PHASE,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 2,
            text: b"A=B\0".to_vec(),
        }
        .to_pdu();
        let wire = pdu.encode().expect("encodes");
        assert_eq!(wire[0], 0x43);
        assert_eq!(wire[1], 0x80 | 1 << 2 | 3);
        assert_eq!(&wire[2..4], &[0, 0], "version max and min");
        assert_eq!(&wire[5..8], &[0, 0, 4]);
        assert_eq!(&wire[8..14], &[0x80, 1, 2, 3, 4, 5]);
        assert_eq!(&wire[16..20], &[0, 0, 0, 1]);
        assert_eq!(&wire[24..32], &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(&wire[48..], b"A=B\0");
    }

    #[test]
    fn data_out_layout_matches_rfc_7143_11_7() {
        let pdu = DataOutPdu {
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            itt: 2,
            ttt: 0x99,
            exp_stat_sn: 3,
            data_sn: 4,
            buffer_offset: 8192,
            final_: true,
            data: vec![0xab; 6],
        }
        .to_pdu();
        let wire = pdu.encode().expect("encodes");
        assert_eq!(wire[0], 0x05);
        assert_eq!(wire[1], 0x80);
        assert_eq!(&wire[20..24], &[0, 0, 0, 0x99]);
        assert_eq!(&wire[28..32], &[0, 0, 0, 3]);
        assert_eq!(&wire[36..44], &[0, 0, 0, 4, 0, 0, 0x20, 0]);
        assert_eq!(wire.len(), 48 + 8);
    }

    #[test]
    fn data_in_with_status_and_underflow_decodes() {
        let mut wire = vec![0u8; 48];
        wire[0] = opcode::DATA_IN;
        wire[1] = 0x80 | DATA_IN_STATUS | RESIDUAL_UNDERFLOW;
        wire[3] = 0x00;
        wire[7] = 3;
        wire[16..20].copy_from_slice(&[0, 0, 0, 9]);
        wire[24..28].copy_from_slice(&[0, 0, 0, 11]);
        wire[40..44].copy_from_slice(&[0, 0, 0x10, 0]);
        wire[44..48].copy_from_slice(&[0, 0, 0, 0x20]);
        wire.extend_from_slice(&[1, 2, 3, 0]);
        let pdu = decode_one(&wire);
        assert_eq!(pdu.itt(), 9);
        assert_eq!(pdu.stat_sn(), 11);
        assert!(pdu.carries_status());
        assert_eq!(
            pdu.parse_target().expect("parses"),
            TargetPdu::DataIn {
                ttt: 0,
                data_sn: 0,
                buffer_offset: 0x1000,
                status: Some(0),
                residual: Residual::Underflow(0x20),
                data: vec![1, 2, 3],
            }
        );
    }

    #[test]
    fn scsi_response_sense_and_tmf_response_decode() {
        let mut wire = vec![0u8; 48];
        wire[0] = opcode::SCSI_RESPONSE;
        wire[1] = 0x80;
        wire[3] = 0x02; // CHECK CONDITION
        wire[7] = 6;
        wire.extend_from_slice(&[0, 4, 0x70, 0, 5, 0, 0, 0]);
        assert_eq!(
            decode_one(&wire).parse_target().expect("parses"),
            TargetPdu::ScsiResponse {
                response: 0,
                status: 2,
                residual: Residual::None,
                sense: vec![0x70, 0, 5, 0],
            }
        );

        let mut wire = vec![0u8; 48];
        wire[0] = opcode::TASK_MANAGEMENT_RESPONSE;
        wire[1] = 0x80;
        wire[2] = 1;
        assert_eq!(
            decode_one(&wire).parse_target().expect("parses"),
            TargetPdu::TaskManagementResponse { response: 1 }
        );
    }

    #[test]
    fn login_response_decodes_stages_status_and_keys() {
        let mut wire = vec![0u8; 48];
        wire[0] = opcode::LOGIN_RESPONSE;
        wire[1] = 0x80 | 1 << 2 | 3;
        wire[14..16].copy_from_slice(&[0, 7]);
        wire[36] = 2;
        wire[37] = 3;
        let text = b"MaxBurstLength=65536\0";
        wire[7] = text.len() as u8;
        wire.extend_from_slice(text);
        wire.resize(48 + padded(text.len()), 0);
        assert_eq!(
            decode_one(&wire).parse_target().expect("parses"),
            TargetPdu::LoginResponse {
                transit: true,
                continue_: false,
                current_stage: 1,
                next_stage: 3,
                tsih: 7,
                status_class: 2,
                status_detail: 3,
                text: vec![("MaxBurstLength".to_owned(), "65536".to_owned())],
            }
        );
    }

    #[test]
    fn nop_in_ping_is_answered_with_its_ttt_and_lun() {
        let mut ping = Pdu::new(opcode::NOP_IN, false);
        ping.bhs[9] = 1;
        ping.set_u32(16, RESERVED_TAG);
        ping.set_u32(20, 0x55);
        assert!(!ping.carries_status());
        let reply = nop_out_reply(&ping, 10, 11);
        assert_eq!(reply.bhs[0], 0x40);
        assert_eq!(reply.itt(), RESERVED_TAG);
        assert_eq!(reply.u32_at(20), 0x55);
        assert_eq!(reply.lun(), ping.lun());
        assert_eq!(reply.u32_at(24), 10);
    }
}
