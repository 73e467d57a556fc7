//! No-op XDP programs, the baselines every cost is compared with: two instructions
//! (`r0 = ACTION; exit`) in a minimal ELF object written with the `object` crate, loaded
//! through aya like the real program so both pay the same test-run overhead.

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
    write::{Object, Symbol, SymbolSection},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// An ELF object holding one XDP program named `noop` that returns `action`.
pub fn object(action: u32) -> Vec<u8> {
    let mut code = Vec::with_capacity(16);
    insn(&mut code, 0xb7, 0, 0, 0, action as i32); // r0 = action
    insn(&mut code, 0x95, 0, 0, 0, 0); // exit
    text_object("noop", &code)
}

/// An ELF object holding one XDP program named `noop` that reads the frame's EtherType
/// and drops IPv4 frames (anything else, or a frame too short for the field, passes).
///
/// The floor of any defence that looks at a frame: its first cache line is read, as every
/// such program (and the kernel's own stack) must. On the lab's link that line was last
/// written by the router's CPU; a program that never reads the frame never pays for it.
pub fn reading_drop_object() -> Vec<u8> {
    let mut c = Vec::with_capacity(64);
    insn(&mut c, 0x61, 2, 1, 0, 0); // r2 = data
    insn(&mut c, 0x61, 3, 1, 4, 0); // r3 = data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = data
    insn(&mut c, 0x07, 4, 0, 0, 14); // r4 += Ethernet header
    insn(&mut c, 0x2d, 4, 3, 4, 0); // if r4 > data_end: pass
    insn(&mut c, 0x69, 5, 2, 12, 0); // r5 = EtherType
    insn(&mut c, 0x55, 5, 0, 2, 0x0008); // if not IPv4 (08 00 as a little-endian load): pass
    insn(&mut c, 0xb7, 0, 0, 0, XDP_DROP as i32);
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    insn(&mut c, 0xb7, 0, 0, 0, XDP_PASS as i32); // pass:
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    text_object("noop", &c)
}

/// An ELF object holding one XDP program named `noop` that drops IPv4 frames whose source
/// address is inside `net` (or, with `answer`, sends them back where they came from) and
/// passes everything else (non-IPv4 frames, and frames too short for the headers, pass).
///
/// The floors of a defence that keeps legitimate traffic flowing: the header is read as
/// far as the source address, and no state is kept, because the program is told the
/// attack's sources, which no real defence is. The answer is the frame itself with its
/// Ethernet and IPv4 addresses and its ports swapped (so both checksums still hold) and
/// sent back with `XDP_TX`: what any defence that answers every SYN pays at least for the
/// answer (a SYN cookie costs more to make).
pub fn source_object(net: ipnet::Ipv4Net, answer: bool) -> Vec<u8> {
    // The source is loaded as a little-endian u32 of its network-order bytes.
    let mask = u32::from_le_bytes(net.netmask().octets()) as i32;
    let value = u32::from_le_bytes(net.network().octets()) as i32;
    let mut act = Vec::with_capacity(160);
    if answer {
        // Swap (offset, offset, width): the MACs as 4 + 2 bytes, IPv4 addresses, ports.
        for (a, b, w) in [(0, 6, 4), (4, 10, 2), (26, 30, 4), (34, 36, 2)] {
            let (ld, st) = if w == 4 { (0x61, 0x63) } else { (0x69, 0x6b) };
            insn(&mut act, ld, 6, 2, a, 0);
            insn(&mut act, ld, 7, 2, b, 0);
            insn(&mut act, st, 2, 7, a, 0);
            insn(&mut act, st, 2, 6, b, 0);
        }
    }
    insn(
        &mut act,
        0xb7,
        0,
        0,
        0,
        if answer { XDP_TX } else { XDP_DROP } as i32,
    );
    insn(&mut act, 0x95, 0, 0, 0, 0); // exit
    let skip = (act.len() / 8) as i16; // instructions to jump over to reach `pass`
    let mut c = Vec::with_capacity(act.len() + 96);
    insn(&mut c, 0x61, 2, 1, 0, 0); // r2 = data
    insn(&mut c, 0x61, 3, 1, 4, 0); // r3 = data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = data
    insn(&mut c, 0x07, 4, 0, 0, 38); // r4 += Ethernet, IPv4 header, ports
    insn(&mut c, 0x2d, 4, 3, skip + 5, 0); // if r4 > data_end: pass
    insn(&mut c, 0x69, 5, 2, 12, 0); // r5 = EtherType
    insn(&mut c, 0x55, 5, 0, skip + 3, 0x0008); // if not IPv4: pass
    insn(&mut c, 0x61, 5, 2, 26, 0); // r5 = source address
    insn(&mut c, 0x54, 5, 0, 0, mask); // w5 &= mask
    insn(&mut c, 0x56, 5, 0, skip, value); // if w5 != network: pass
    c.extend_from_slice(&act);
    insn(&mut c, 0xb7, 0, 0, 0, XDP_PASS as i32); // pass:
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    text_object("noop", &c)
}

/// A loaded no-op program (or one of the floors: [`reading_drop_object`],
/// [`source_object`]).
pub struct Noop {
    ebpf: Ebpf,
}

impl Noop {
    pub fn load(action: u32) -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: load_xdp(&object(action), "noop")?,
        })
    }

    /// The program of [`reading_drop_object`].
    pub fn load_reading_drop() -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: load_xdp(&reading_drop_object(), "noop")?,
        })
    }

    /// The program of [`source_object`].
    pub fn load_source(net: ipnet::Ipv4Net, answer: bool) -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: load_xdp(&source_object(net, answer), "noop")?,
        })
    }

    /// Attach to an interface of the calling thread's network namespace (until dropped).
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        attach_xdp(&mut self.ebpf, "noop", ifname)
    }

    /// Mean ns per run over `repeat` runs, and the action returned.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        run_repeat(&self.ebpf, "noop", frame, repeat)
    }

    /// Run on a frame once: the action returned and the frame as it leaves.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        run_out(&self.ebpf, "noop", frame)
    }
}

/// Load an object and its XDP program `name` into the kernel.
fn load_xdp(object: &[u8], name: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(object)?;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("{name} program missing"))?
        .try_into()?;
    prog.load()?;
    Ok(ebpf)
}

/// Attach a loaded object's XDP program `name` to an interface of the calling thread's
/// network namespace (until the object is dropped).
fn attach_xdp(ebpf: &mut Ebpf, name: &str, ifname: &str) -> anyhow::Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("{name} program missing"))?
        .try_into()?;
    prog.attach(ifname, aya::programs::XdpMode::default())?;
    Ok(())
}

/// Run a loaded XDP program once on a frame: the action returned and the frame as it
/// leaves.
fn run_out(ebpf: &Ebpf, name: &str, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    let prog: &Xdp = ebpf
        .program(name)
        .ok_or_else(|| anyhow::anyhow!("{name} program missing"))?
        .try_into()?;
    let mut out = vec![0u8; frame.len()];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Run a loaded XDP program `repeat` times on a frame: the action it returned and the
/// mean ns per run (as the kernel reports it).
fn run_repeat(ebpf: &Ebpf, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
    let prog: &Xdp = ebpf
        .program(name)
        .ok_or_else(|| anyhow::anyhow!("{name} program missing"))?
        .try_into()?;
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    })?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// One instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: &mut Vec<u8>, op: u8, dst: u8, src: u8, off: i16, imm: i32) {
    code.push(op);
    code.push((src << 4) | dst);
    code.extend_from_slice(&off.to_le_bytes());
    code.extend_from_slice(&imm.to_le_bytes());
}

/// An ELF object holding one XDP program `name` made of `code`, without maps.
fn text_object(name: &str, code: &[u8]) -> Vec<u8> {
    map_object(name, code, None)
}

/// An ELF object holding one XDP program `name` made of `code` and, if given, one map
/// `FLOOR` (a legacy `bpf_map_def`: type, key size, value size, max entries, flags)
/// whose address the `ld_imm64` at instruction `reloc_at` loads.
fn map_object(name: &str, code: &[u8], map: Option<([u32; 5], usize)>) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let map_sym = map.map(|(def, _)| {
        let maps = obj.add_section(Vec::new(), b"maps".to_vec(), SectionKind::Data);
        let bytes: Vec<u8> = def.iter().flat_map(|v| v.to_le_bytes()).collect();
        let value = obj.append_section_data(maps, &bytes, 4);
        obj.add_symbol(Symbol {
            name: b"FLOOR".to_vec(),
            value,
            size: bytes.len() as u64,
            kind: SymbolKind::Data,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(maps),
            flags: SymbolFlags::None,
        })
    });
    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
    let off = obj.append_section_data(text, code, 8);
    obj.add_symbol(Symbol {
        name: name.as_bytes().to_vec(),
        value: off,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    if let (Some(symbol), Some((_, at))) = (map_sym, map) {
        obj.add_relocation(
            text,
            object::write::Relocation {
                offset: off + 8 * at as u64,
                symbol,
                addend: 0,
                flags: object::RelocationFlags::Elf {
                    r_type: object::elf::R_BPF_64_64,
                },
            },
        )
        .expect("relocation");
    }
    let lic = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(lic, b"GPL\0", 1);
    obj.write().expect("write ELF object")
}

/// The lab router's fast path for the flood, as a hardware router or a NIC's own
/// forwarding would be: IPv4 frames for `dst` get their Ethernet addresses rewritten
/// (`to_mac` the next hop's, `from_mac` the egress device's) and are redirected to
/// interface `ifindex`; anything else is passed to the router's stack. TTL is left as it
/// is (the lab's one hop). Nineteen instructions.
///
/// A frame redirected this way reaches a veth peer as a raw XDP frame, as a frame
/// reaches a server from its NIC: an XDP program there runs on it natively, and only the
/// frames it passes are built into socket buffers, by the server's kernel.
pub fn forward_object(
    dst: std::net::Ipv4Addr,
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    ifindex: u32,
) -> Vec<u8> {
    // Packet bytes as the little-endian loads and stores of the program see them.
    let le32 = |b: [u8; 4]| i32::from_le_bytes(b);
    let le16 = |b: [u8; 2]| i32::from(u16::from_le_bytes(b));
    let mut c = Vec::new();
    insn(&mut c, 0x61, 2, 1, 0, 0); // r2 = data
    insn(&mut c, 0x61, 3, 1, 4, 0); // r3 = data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = data
    insn(&mut c, 0x07, 4, 0, 0, 34); // r4 += Ethernet + IPv4 headers
    insn(&mut c, 0x2d, 4, 3, 12, 0); // if r4 > data_end: pass
    insn(&mut c, 0x69, 5, 2, 12, 0); // r5 = EtherType
    insn(&mut c, 0x55, 5, 0, 10, le16([0x08, 0x00])); // if not IPv4: pass
    insn(&mut c, 0x61, 5, 2, 30, 0); // r5 = IPv4 destination
    insn(&mut c, 0x56, 5, 0, 8, le32(dst.octets())); // if w5 != dst: pass
    insn(
        &mut c,
        0x62,
        2,
        0,
        0,
        le32([to_mac[0], to_mac[1], to_mac[2], to_mac[3]]),
    );
    insn(&mut c, 0x6a, 2, 0, 4, le16([to_mac[4], to_mac[5]]));
    insn(
        &mut c,
        0x62,
        2,
        0,
        6,
        le32([from_mac[0], from_mac[1], from_mac[2], from_mac[3]]),
    );
    insn(&mut c, 0x6a, 2, 0, 10, le16([from_mac[4], from_mac[5]]));
    insn(&mut c, 0xb7, 1, 0, 0, ifindex as i32); // r1 = ifindex
    insn(&mut c, 0xb7, 2, 0, 0, 0); // r2 = flags
    insn(&mut c, 0x85, 0, 0, 0, 23); // call bpf_redirect
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    insn(&mut c, 0xb7, 0, 0, 0, XDP_PASS as i32); // pass:
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    text_object("forward", &c)
}

/// The loaded router fast path (see [`forward_object`]); detached when dropped.
pub struct Forwarder {
    ebpf: Ebpf,
}

impl Forwarder {
    pub fn load(
        dst: std::net::Ipv4Addr,
        to_mac: [u8; 6],
        from_mac: [u8; 6],
        ifindex: u32,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: load_xdp(&forward_object(dst, to_mac, from_mac, ifindex), "forward")?,
        })
    }

    /// Attach to an interface of the calling thread's network namespace (until dropped).
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        attach_xdp(&mut self.ebpf, "forward", ifname)
    }

    /// Run on a frame once: the action returned and the frame as it leaves.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        run_out(&self.ebpf, "forward", frame)
    }
}

/// The floor of a source-table lookup: an XDP program that builds synguard's source key
/// from the packet's IPv4 source, looks it up in a hash table of synguard's key and
/// value sizes and capacity, and bumps a counter in the value (as the token bucket
/// would); nothing else. Twenty instructions, loaded through aya like the real program.
/// Spread over a full table it pays the same cache and TLB misses as the real program,
/// so it tells how much of a cost at scale is the memory's.
pub fn lookup_object(max_entries: u32) -> Vec<u8> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let def = [
        BPF_MAP_TYPE_HASH,
        size_of::<synguard_common::SourceKey>() as u32,
        size_of::<synguard_common::Bucket>() as u32,
        max_entries,
        0,
    ];
    let mut c = Vec::new();
    insn(&mut c, 0xbf, 6, 1, 0, 0); // r6 = ctx
    insn(&mut c, 0x61, 2, 6, 0, 0); // r2 = data
    insn(&mut c, 0x61, 3, 6, 4, 0); // r3 = data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = data
    insn(&mut c, 0x07, 4, 0, 0, 34); // r4 += Ethernet + IPv4 headers
    insn(&mut c, 0x2d, 4, 3, 15, 0); // if r4 > data_end: pass
    insn(&mut c, 0x61, 5, 2, 26, 0); // r5 = IPv4 source
    insn(&mut c, 0xb7, 0, 0, 0, 0); // r0 = 0
    insn(&mut c, 0x7b, 10, 0, -24, 0); // key bytes 0..8 = 0
    insn(&mut c, 0x62, 10, 0, -16, -65536); // key bytes 8..12 = 0, 0, ff, ff
    insn(&mut c, 0x63, 10, 5, -12, 0); // key bytes 12..16 = source
    insn(&mut c, 0x62, 10, 0, -8, 32); // prefix length 32
    let reloc_at = c.len() / 8;
    insn(&mut c, 0x18, 1, 0, 0, 0); // r1 = map (ld_imm64, relocated)
    insn(&mut c, 0, 0, 0, 0, 0);
    insn(&mut c, 0xbf, 2, 10, 0, 0); // r2 = fp
    insn(&mut c, 0x07, 2, 0, 0, -24); // r2 = &key
    insn(&mut c, 0x85, 0, 0, 0, 1); // call map_lookup_elem
    insn(&mut c, 0x15, 0, 0, 3, 0); // if !value: pass
    insn(&mut c, 0x79, 1, 0, 0, 0); // r1 = value.tat_ns
    insn(&mut c, 0x07, 1, 0, 0, 1); // r1 += 1
    insn(&mut c, 0x7b, 0, 1, 0, 0); // value.tat_ns = r1
    insn(&mut c, 0xb7, 0, 0, 0, XDP_PASS as i32); // pass:
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    map_object("floor", &c, Some((def, reloc_at)))
}

/// The floor of any per-source state: an XDP program that hashes the packet's IPv4
/// source (byte order swapped, multiplied by an odd constant, the top bits kept) to one
/// 64-byte slot of an array of `slots` (a power of two) and bumps a counter in it:
/// one cache line read and written per source, found without a key compare or a second
/// way. Nothing that keeps state per source can touch less memory per packet, so at
/// scale it pays only the cache and TLB misses every such design pays.
pub fn line_object(slots: u32) -> Vec<u8> {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    assert!(slots.is_power_of_two() && slots > 1);
    let def = [BPF_MAP_TYPE_ARRAY, 4, LINE as u32, slots, 0];
    let mut c = Vec::new();
    insn(&mut c, 0x61, 2, 1, 0, 0); // r2 = data
    insn(&mut c, 0x61, 3, 1, 4, 0); // r3 = data_end
    insn(&mut c, 0xbf, 4, 2, 0, 0); // r4 = data
    insn(&mut c, 0x07, 4, 0, 0, 34); // r4 += Ethernet + IPv4 headers
    insn(&mut c, 0x2d, 4, 3, 14, 0); // if r4 > data_end: pass
    insn(&mut c, 0x61, 5, 2, 26, 0); // r5 = IPv4 source (network order)
    insn(&mut c, 0xdc, 5, 0, 0, 32); // r5 = host order (be32)
    insn(&mut c, 0x24, 5, 0, 0, 0x9e37_79b1_u32 as i32); // w5 *= odd constant
    insn(&mut c, 0x74, 5, 0, 0, 32 - slots.trailing_zeros() as i32); // w5 >>= 32 - log2(slots)
    insn(&mut c, 0x63, 10, 5, -4, 0); // key = slot
    let reloc_at = c.len() / 8;
    insn(&mut c, 0x18, 1, 0, 0, 0); // r1 = map (ld_imm64, relocated)
    insn(&mut c, 0, 0, 0, 0, 0);
    insn(&mut c, 0xbf, 2, 10, 0, 0); // r2 = fp
    insn(&mut c, 0x07, 2, 0, 0, -4); // r2 = &key
    insn(&mut c, 0x85, 0, 0, 0, 1); // call map_lookup_elem (inlined for arrays)
    insn(&mut c, 0x15, 0, 0, 3, 0); // if !value: pass
    insn(&mut c, 0x79, 1, 0, 0, 0); // r1 = value[0]
    insn(&mut c, 0x07, 1, 0, 0, 1); // r1 += 1
    insn(&mut c, 0x7b, 0, 1, 0, 0); // value[0] = r1
    insn(&mut c, 0xb7, 0, 0, 0, XDP_PASS as i32); // pass:
    insn(&mut c, 0x95, 0, 0, 0, 0); // exit
    map_object("floor", &c, Some((def, reloc_at)))
}

/// The slot size of [`line_object`]'s array: one cache line.
pub const LINE: usize = 64;

/// Load a floor program made by [`map_object`], and take its map.
fn load_floor(object: &[u8]) -> anyhow::Result<(Ebpf, aya::maps::Map)> {
    let mut ebpf = load_xdp(object, "floor")?;
    let map = ebpf
        .take_map("FLOOR")
        .ok_or_else(|| anyhow::anyhow!("floor map missing"))?;
    Ok((ebpf, map))
}

/// The loaded line floor ([`line_object`]) and its array.
pub struct LineFloor {
    ebpf: Ebpf,
    pub table: aya::maps::Array<aya::maps::MapData, [u8; LINE]>,
    slots: u32,
}

impl LineFloor {
    pub fn load(slots: u32) -> anyhow::Result<Self> {
        let (ebpf, map) = load_floor(&line_object(slots))?;
        Ok(Self {
            table: map.try_into()?,
            ebpf,
            slots,
        })
    }

    /// The slot the program uses for an IPv4 source (as it computes it).
    pub fn slot_of(&self, source: std::net::Ipv4Addr) -> u32 {
        u32::from(source).wrapping_mul(0x9e37_79b1) >> (32 - self.slots.trailing_zeros())
    }

    /// Mean ns per run over `repeat` runs, and the action returned.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        run_repeat(&self.ebpf, "floor", frame, repeat)
    }
}

/// The loaded lookup floor and its table.
pub struct LookupFloor {
    ebpf: Ebpf,
    pub table:
        aya::maps::HashMap<aya::maps::MapData, synguard_common::SourceKey, synguard_common::Bucket>,
}

impl LookupFloor {
    pub fn load(max_entries: u32) -> anyhow::Result<Self> {
        let (ebpf, map) = load_floor(&lookup_object(max_entries))?;
        Ok(Self {
            table: map.try_into()?,
            ebpf,
        })
    }

    /// Mean ns per run over `repeat` runs, and the action returned.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        run_repeat(&self.ebpf, "floor", frame, repeat)
    }
}
