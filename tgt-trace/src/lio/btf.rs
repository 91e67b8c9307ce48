//! Just enough of the BPF Type Format to find struct member offsets in the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) and in a module's split
//! BTF (`/sys/kernel/btf/<module>`, whose type ids and string offsets
//! continue the kernel's). The format: Linux `Documentation/bpf/btf.rst`.
//!
//! This is the relocation a CO-RE loader does for C programs, done once in
//! user space: the probes read at offsets the running kernel's own type
//! information gives, never at offsets compiled in.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{what} is not BTF: {why}")]
    Malformed { what: String, why: String },
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset (the bitfield size, if any, is dropped: no bitfield is read).
    bits: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    /// Size for ints, enums, structs and unions; the referenced type otherwise.
    size_or_type: u32,
    members: Vec<Member>,
    /// For arrays: element type and count.
    array: Option<(u32, u32)>,
}

/// The kernel's types, and a module's on top of them.
#[derive(Debug, Default, Clone)]
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// The kernel's BTF.
    pub fn parse(data: &[u8], what: &str) -> Result<Btf, BtfError> {
        let mut btf = Btf {
            types: vec![Type {
                kind: 0,
                size_or_type: 0,
                members: Vec::new(),
                array: None,
            }],
            ..Btf::default()
        };
        btf.add(data, what)?;
        Ok(btf)
    }

    /// The kernel's types with a module's on top: every module's split BTF
    /// continues the kernel's ids and strings, not another module's.
    pub fn with_module(&self, data: &[u8], what: &str) -> Result<Btf, BtfError> {
        let mut btf = self.clone();
        btf.add(data, what)?;
        Ok(btf)
    }

    /// Adds split BTF whose ids and strings continue these.
    fn add(&mut self, data: &[u8], what: &str) -> Result<(), BtfError> {
        let bad = |why: &str| BtfError::Malformed {
            what: what.to_owned(),
            why: why.to_owned(),
        };
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(bad("no BTF magic (big-endian or not BTF)"));
        }
        let field = |at| u32_at(data, at).ok_or_else(|| bad("truncated header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?;
        // A split BTF's string offsets start after the base's strings.
        self.strings.extend_from_slice(strings);
        let mut at = 0;
        while at < types.len() {
            let word = |i: usize| u32_at(types, at + 4 * i).ok_or_else(|| bad("truncated type"));
            let (name, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut ty = Type {
                kind,
                size_or_type,
                members: Vec::new(),
                array: None,
            };
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => {
                    let elem = u32_at(types, at).ok_or_else(|| bad("truncated array"))?;
                    let count = u32_at(types, at + 8).ok_or_else(|| bad("truncated array"))?;
                    ty.array = Some((elem, count));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let get = |o| u32_at(types, m + o).ok_or_else(|| bad("truncated member"));
                        let offset = get(8)?;
                        ty.members.push(Member {
                            name: get(0)?,
                            ty: get(4)?,
                            bits: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12
                | 16 | KIND_TYPE_TAG => 0,
                other => return Err(bad(&format!("unknown type kind {other}"))),
            };
            at += extra;
            let id = self.types.len() as u32;
            if kind == KIND_STRUCT && !ty.members.is_empty() {
                let name = self.name(name).to_owned();
                if !name.is_empty() {
                    self.structs.entry(name).or_insert(id);
                }
            }
            self.types.push(ty);
        }
        Ok(())
    }

    fn name(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// The size in bytes of type `id`, where it has one.
    fn size(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_ENUM | KIND_STRUCT | KIND_UNION | KIND_ENUM64 => Some(ty.size_or_type),
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, count) = ty.array?;
                Some(self.size(elem)? * count)
            }
            _ => None,
        }
    }

    /// The byte offset of `strukt.member` and the member's size, searching
    /// anonymous structs and unions inside it as C does.
    pub fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(id, member, 0).ok_or_else(|| BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        })
    }

    fn find(&self, id: u32, member: &str, base_bits: u32) -> Option<(u32, u32)> {
        let ty = self.resolve(id)?;
        for m in &ty.members {
            let bits = base_bits + m.bits;
            let name = self.name(m.name);
            if name == member {
                return Some((bits / 8, self.size(m.ty)?));
            }
            let anonymous = name.is_empty()
                && self
                    .resolve(m.ty)
                    .is_some_and(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION);
            if anonymous && let Some(found) = self.find(m.ty, member, bits) {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made BTF: `struct s { int a; union { long b; }; char c[3]; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0c\0int\0long\0char\0".to_vec();
        let name = |n: &str| {
            let needle = format!("\0{n}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("the test's input") as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int, 2: long, 3: char
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        push(&[name("long"), KIND_INT << 24, 8, 64]);
        push(&[name("char"), KIND_INT << 24, 1, 8]);
        // 4: char[3]
        push(&[0, KIND_ARRAY << 24, 0, 3, 1, 3]);
        // 5: union { long b; }
        push(&[0, (KIND_UNION << 24) | 1, 8, name("b"), 2, 0]);
        // 6: struct s { int a @0; union @64; char c[3] @128 }
        push(&[
            name("s"),
            (KIND_STRUCT << 24) | 3,
            24,
            name("a"),
            1,
            0,
            0,
            5,
            64,
            name("c"),
            4,
            128,
        ]);
        let mut data = Vec::new();
        let header = [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ];
        for w in header {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample(), "sample").expect("the test's input");
        assert_eq!(btf.member("s", "a").expect("the test's input"), (0, 4));
        assert_eq!(btf.member("s", "b").expect("the test's input"), (8, 8));
        assert_eq!(btf.member("s", "c").expect("the test's input"), (16, 3));
        assert!(matches!(
            btf.member("s", "d"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(btf.member("t", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"\x7fELF", "x").is_err());
        let mut cut = sample();
        cut.truncate(30);
        assert!(Btf::parse(&cut, "x").is_err());
    }

    /// The running kernel's own BTF, where there is one (the host has no
    /// LIO, but its list_head and task_struct are the same kind of thing).
    #[test]
    fn reads_the_running_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("no /sys/kernel/btf/vmlinux: skipped");
            return;
        };
        let btf = Btf::parse(&data, "vmlinux").expect("the test's input");
        assert_eq!(
            btf.member("list_head", "next").expect("the test's input"),
            (0, 8)
        );
        assert_eq!(
            btf.member("list_head", "prev").expect("the test's input"),
            (8, 8)
        );
        // work_struct { atomic_long_t data; struct list_head entry; func }
        assert_eq!(
            btf.member("work_struct", "entry")
                .expect("the test's input"),
            (8, 16)
        );
        assert_eq!(
            btf.member("work_struct", "func").expect("the test's input"),
            (24, 8)
        );
    }
}
