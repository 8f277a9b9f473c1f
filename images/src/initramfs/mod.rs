//! The guest initramfs's building blocks: the `newc` cpio writer and the kernel-module
//! resolver (dependencies read from each module's `.modinfo`). Fetching Debian's kernel
//! package and assembling the archive is `cargo xtask images`' job.

pub mod cpio;
pub mod kmod;
