//! Rebuild when `bpf-linker` changes: building this crate depends on that binary, which
//! cargo cannot express (see aya-template).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask build`"),
    }
}
