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
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
    let mut code = Vec::with_capacity(16);
    // mov64 r0, action
    code.extend_from_slice(&[0xb7, 0x00, 0x00, 0x00]);
    code.extend_from_slice(&action.to_le_bytes());
    // exit
    code.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
    let off = obj.append_section_data(text, &code, 8);
    obj.add_symbol(Symbol {
        name: b"noop".to_vec(),
        value: off,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let lic = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(lic, b"GPL\0", 1);
    obj.write().expect("write ELF object")
}

/// A loaded no-op program.
pub struct Noop {
    ebpf: Ebpf,
}

impl Noop {
    pub fn load(action: u32) -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: load_xdp(&object(action), "noop")?,
        })
    }

    /// Attach to an interface of the calling thread's network namespace (until dropped).
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("noop")
            .ok_or_else(|| anyhow::anyhow!("noop program missing"))?
            .try_into()?;
        prog.attach(ifname, aya::programs::XdpMode::default())?;
        Ok(())
    }

    /// Mean ns per run over `repeat` runs, and the action returned.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
        run_repeat(&self.ebpf, "noop", frame, repeat)
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

/// The floor of a source-table lookup: an XDP program that builds synguard's source key
/// from the packet's IPv4 source, looks it up in a hash table of synguard's key and
/// value sizes and capacity, and bumps a counter in the value (as the token bucket
/// would); nothing else. Twenty instructions, loaded through aya like the real program.
/// Spread over a full table it pays the same cache and TLB misses as the real program,
/// so it tells how much of a cost at scale is the memory's.
pub fn lookup_object(max_entries: u32) -> Vec<u8> {
    use object::write::{Relocation, SectionId};
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // One instruction: opcode, dst and src registers, offset, immediate.
    fn insn(code: &mut Vec<u8>, op: u8, dst: u8, src: u8, off: i16, imm: i32) {
        code.push(op);
        code.push((src << 4) | dst);
        code.extend_from_slice(&off.to_le_bytes());
        code.extend_from_slice(&imm.to_le_bytes());
    }
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let maps: SectionId = obj.add_section(Vec::new(), b"maps".to_vec(), SectionKind::Data);
    // struct bpf_map_def { type, key_size, value_size, max_entries, map_flags }
    let mut def = Vec::new();
    for v in [
        BPF_MAP_TYPE_HASH,
        size_of::<synguard_common::SourceKey>() as u32,
        size_of::<synguard_common::Bucket>() as u32,
        max_entries,
        0,
    ] {
        def.extend_from_slice(&v.to_le_bytes());
    }
    let map_off = obj.append_section_data(maps, &def, 4);
    let map_sym = obj.add_symbol(Symbol {
        name: b"FLOOR".to_vec(),
        value: map_off,
        size: def.len() as u64,
        kind: SymbolKind::Data,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(maps),
        flags: SymbolFlags::None,
    });

    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
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
    let reloc_at = c.len() as u64;
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
    let off = obj.append_section_data(text, &c, 8);
    obj.add_symbol(Symbol {
        name: b"floor".to_vec(),
        value: off,
        size: c.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    obj.add_relocation(
        text,
        Relocation {
            offset: off + reloc_at,
            symbol: map_sym,
            addend: 0,
            flags: object::RelocationFlags::Elf {
                r_type: object::elf::R_BPF_64_64,
            },
        },
    )
    .expect("relocation");
    let lic = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(lic, b"GPL\0", 1);
    obj.write().expect("write ELF object")
}

/// The loaded lookup floor and its table.
pub struct LookupFloor {
    ebpf: Ebpf,
    pub table:
        aya::maps::HashMap<aya::maps::MapData, synguard_common::SourceKey, synguard_common::Bucket>,
}

impl LookupFloor {
    pub fn load(max_entries: u32) -> anyhow::Result<Self> {
        let mut ebpf = load_xdp(&lookup_object(max_entries), "floor")?;
        let map = ebpf
            .take_map("FLOOR")
            .ok_or_else(|| anyhow::anyhow!("floor map missing"))?;
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
