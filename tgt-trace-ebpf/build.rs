use which::which;

/// Rebuild the probes when bpf-linker changes: a new linker can produce a
/// different object from the same source.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
