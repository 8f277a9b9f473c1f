//! Box's images: the one home for image code.
//!
//! - [`oci`]: an OCI image layout (a directory, or a tar of one) read on `oci-spec`'s types,
//!   every blob verified against its digest and size, the manifest chosen for linux/amd64;
//! - [`unpack`]: layers applied as hostile input, every path resolved inside the root being
//!   built (`openat2` with `RESOLVE_IN_ROOT`), under [`Limits`];
//! - [`disk`]: the container disk (ext4) a microVM mounts read-only;
//! - [`write`]: OCI layouts written (the test image, and the hostile images of the tests);
//! - [`initramfs`]: the guest initramfs's cpio writer and kernel-module resolver.
//!
//! Policy for what an image may hold is written once, in `images/README.md`.

mod digest;
pub mod disk;
mod error;
pub mod initramfs;
mod limits;
pub mod oci;
pub mod unpack;
pub mod write;

pub use digest::{sha256_digest, sha256_hex_of};
pub use error::ImageError;
pub use limits::Limits;
pub use oci::{resolve, resolve_with, verify_layout, ImageConfig, ResolvedImage};
