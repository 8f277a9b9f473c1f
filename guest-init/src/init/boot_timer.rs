//! Boot milestones for box-vmm's boot timer: one byte written to I/O port 0x440 (box-vmm
//! with `--boot-timer` prints the time of each since its own start; without it, or under
//! another VMM, the write is an ignored port access). Debian's kernel has no /dev/port, so
//! PID 1 (which holds CAP_SYS_RAWIO) asks for the port with ioperm(2) and writes it itself.
//!
//! The permission is per thread and inherited by threads and processes created while it is
//! held (even across execve), so it is held only on the main thread, only before any other
//! thread or child exists, and dropped with the [`Timer`].

/// box-vmm's boot timer port (`BOOT_TIMER_PORT` in its layout).
const PORT: u16 = 0x440;

/// What each milestone byte means, in boot order.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Milestone {
    /// /init runs and /dev is mounted: the kernel's part is over.
    InitStarted = 1,
    /// The listed kernel modules are loaded (virtio devices probed).
    ModulesLoaded = 2,
    /// Every vsock listener is bound: connects queue from here on.
    ListenersBound = 3,
}

/// The port permission, held from creation to drop.
pub struct Timer {
    granted: bool,
}

impl Timer {
    /// `enabled` is VM mode: a host process must not touch I/O ports.
    pub fn new(enabled: bool) -> Timer {
        // SAFETY: ioperm(2) only changes this thread's I/O permission bitmap.
        let granted = enabled && unsafe { libc::ioperm(u64::from(PORT), 1, 1) } == 0;
        Timer { granted }
    }

    pub fn mark(&self, m: Milestone) {
        if self.granted {
            // SAFETY: one byte to a port this thread was granted; box-vmm's boot timer (or
            // nothing) sits there, and the write touches no memory.
            unsafe {
                std::arch::asm!(
                    "out dx, al",
                    in("dx") PORT,
                    in("al") m as u8,
                    options(nomem, nostack, preserves_flags)
                );
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.granted {
            // SAFETY: as in `new`: this thread's permission bitmap only.
            unsafe { libc::ioperm(u64::from(PORT), 1, 0) };
        }
    }
}
