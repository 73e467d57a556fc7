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
        let mut ebpf = Ebpf::load(&object(action))?;
        let prog: &mut Xdp = ebpf
            .program_mut("noop")
            .ok_or_else(|| anyhow::anyhow!("noop program missing"))?
            .try_into()?;
        prog.load()?;
        Ok(Self { ebpf })
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
        let prog: &Xdp = self
            .ebpf
            .program("noop")
            .ok_or_else(|| anyhow::anyhow!("noop program missing"))?
            .try_into()?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        // The kernel reports the mean duration of one run.
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }
}
