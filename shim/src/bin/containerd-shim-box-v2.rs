//! `containerd-shim-box-v2`: containerd's runtime `io.containerd.box.v2`, one microVM per pod.

fn main() {
    box_shim::containerd::main();
}
