//! Generates the ttrpc bindings for Box's own agent service (`proto/agent.proto`).
use std::{env, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("agent");
    fs::create_dir_all(&out).expect("create OUT_DIR/agent");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Codegen::new()
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate agent.proto bindings");
    // `include!` cannot take a file with inner attributes (rust-lang/rust#18810), and the
    // generated files start with `#![...]` and `//!` lines: drop them.
    for entry in fs::read_dir(&out).expect("read OUT_DIR/agent") {
        let path = entry.expect("dir entry").path();
        let text = fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}
