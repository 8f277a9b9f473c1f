//! virtio-blk on a raw image file.
//!
//! A device may also be a **slot** (`--disk-slots`): declared at boot with no file (zero
//! sectors), filled later through box-vmm's control socket with a file the host opened, and
//! emptied again. The driver learns of each change from a config-change interrupt (the
//! capacity in config space changes) and can tell disks apart by their id (`GET_ID`, the
//! guest's `/sys/block/vdX/serial`). A slot never advertises `VIRTIO_BLK_F_RO` (features are
//! fixed at boot): a disk attached read-only refuses writes with `IOERR` instead.
//!
//! Requests: IN, OUT, FLUSH, GET_ID. Every request is checked before any I/O:
//! the header must be readable, the status byte writable, the data length a
//! multiple of 512 and the sector range inside the disk. A bad request gets
//! `VIRTIO_BLK_S_IOERR` (or `UNSUPP`) when it has a status byte to carry it, and
//! is completed with zero length when it does not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::VirtioDevice;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Largest data transfer copied through a bounce buffer at once.
const CHUNK: usize = 128 * 1024;
/// Segments per request we advertise (seg_max).
const SEG_MAX: u32 = 126;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    type_: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: plain-old-data, no padding (u32, u32, u64), any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// A virtio-blk device backed by a raw file, or a slot that may hold one.
pub struct Block {
    /// None: an empty slot (zero sectors).
    file: Option<File>,
    read_only: bool,
    /// Attachable and detachable while the VM runs.
    slot: bool,
    capacity_sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; 24],
}

/// Why a slot refused an attach or detach.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("not a disk slot (a boot disk stays for the VM's life)")]
    NotASlot,
    #[error("the slot already holds a disk (detach it first)")]
    Occupied,
    #[error("the slot is empty")]
    Empty,
    #[error("the file is {0} bytes: a disk needs at least one 512-byte sector")]
    TooSmall(u64),
    #[error("cannot read the file's size: {0}")]
    Stat(String),
}

/// Why a request failed; only used to pick the status byte and for logs.
#[derive(Debug, PartialEq, Eq)]
enum ReqError {
    Unsupported(u32),
    ReadOnly,
    OutOfRange,
    BadLength,
    Io,
}

impl Block {
    /// Opens `path`; `read_only` opens it without write access and advertises RO.
    pub fn open(path: &Path, read_only: bool, id: &str) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only, id)
    }

    /// Wraps an open file.
    pub fn from_file(file: File, read_only: bool, id: &str) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let mut b = Block::blank(false);
        b.fill(file, len, read_only, id);
        Ok(b)
    }

    /// An empty slot with id `id` (until a disk brings its own).
    pub fn empty_slot(id: &str) -> Self {
        let mut b = Block::blank(true);
        b.set_id(id);
        b
    }

    /// No file, no id, zero sectors.
    fn blank(slot: bool) -> Self {
        let mut config = [0u8; 24];
        // struct virtio_blk_config: capacity (u64) @0, size_max (u32) @8, seg_max (u32) @12,
        // geometry (u32) @16, blk_size (u32) @20.
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Block {
            file: None,
            read_only: false,
            slot,
            capacity_sectors: 0,
            id: [0; VIRTIO_BLK_ID_BYTES as usize],
            config,
        }
    }

    fn set_id(&mut self, id: &str) {
        self.id = [0; VIRTIO_BLK_ID_BYTES as usize];
        let n = id.len().min(self.id.len());
        self.id[..n].copy_from_slice(&id.as_bytes()[..n]);
    }

    fn fill(&mut self, file: File, len: u64, read_only: bool, id: &str) {
        // A trailing partial sector cannot be addressed; don't expose it.
        self.capacity_sectors = len / SECTOR_SIZE;
        self.config[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        self.file = Some(file);
        self.read_only = read_only;
        self.set_id(id);
    }

    /// Puts `file` in this slot as disk `id`; returns its size in sectors. The caller tells
    /// the driver (a config change).
    pub fn attach(&mut self, file: File, read_only: bool, id: &str) -> Result<u64, SlotError> {
        if !self.slot {
            return Err(SlotError::NotASlot);
        }
        if self.file.is_some() {
            return Err(SlotError::Occupied);
        }
        let len = file
            .metadata()
            .map_err(|e| SlotError::Stat(e.to_string()))?
            .len();
        if len < SECTOR_SIZE {
            return Err(SlotError::TooSmall(len));
        }
        self.fill(file, len, read_only, id);
        Ok(self.capacity_sectors)
    }

    /// Empties this slot (the file is closed); the id stays until the next attach. The
    /// caller tells the driver; requests from then on fail.
    pub fn detach(&mut self) -> Result<(), SlotError> {
        if !self.slot {
            return Err(SlotError::NotASlot);
        }
        if self.file.take().is_none() {
            return Err(SlotError::Empty);
        }
        self.capacity_sectors = 0;
        self.config[0..8].copy_from_slice(&0u64.to_le_bytes());
        self.read_only = false;
        Ok(())
    }

    /// Disk size in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<u64, ReqError> {
        if !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(ReqError::BadLength);
        }
        let sectors = len as u64 / SECTOR_SIZE;
        let end = sector.checked_add(sectors).ok_or(ReqError::OutOfRange)?;
        if end > self.capacity_sectors {
            return Err(ReqError::OutOfRange);
        }
        sector.checked_mul(SECTOR_SIZE).ok_or(ReqError::OutOfRange)
    }

    /// Serves one chain; returns the number of bytes written into guest memory.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let mut reader = match chain.clone().reader(mem) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("virtio-blk: unreadable chain: {e}");
                return 0;
            }
        };
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("virtio-blk: unwritable chain: {e}");
                return 0;
            }
        };
        // The status byte is the last writable byte; without it we can't answer.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            tracing::debug!("virtio-blk: request without a status byte dropped");
            return 0;
        };
        let mut status_w = match writer.split_at(data_len) {
            Ok(s) => s,
            Err(_) => return 0,
        };
        let header: RequestHeader = match reader.read_obj() {
            Ok(h) => h,
            Err(_) => {
                let _ = status_w.write_all(&[VIRTIO_BLK_S_IOERR as u8]);
                return 1;
            }
        };

        let result: Result<usize, ReqError> = match header.type_ {
            VIRTIO_BLK_T_IN => self.check_range(header.sector, data_len).and_then(|off| {
                let file = self.file.as_ref().ok_or(ReqError::Io)?;
                let mut buf = vec![0u8; data_len.min(CHUNK)];
                let mut done = 0usize;
                while done < data_len {
                    let n = (data_len - done).min(CHUNK);
                    file.read_exact_at(&mut buf[..n], off + done as u64)
                        .map_err(|_| ReqError::Io)?;
                    writer.write_all(&buf[..n]).map_err(|_| ReqError::Io)?;
                    done += n;
                }
                Ok(data_len)
            }),
            VIRTIO_BLK_T_OUT => {
                let len = reader.available_bytes();
                if self.read_only {
                    Err(ReqError::ReadOnly)
                } else {
                    self.check_range(header.sector, len).and_then(|off| {
                        let file = self.file.as_ref().ok_or(ReqError::Io)?;
                        let mut buf = vec![0u8; len.min(CHUNK)];
                        let mut done = 0usize;
                        while done < len {
                            let n = (len - done).min(CHUNK);
                            reader.read_exact(&mut buf[..n]).map_err(|_| ReqError::Io)?;
                            file.write_all_at(&buf[..n], off + done as u64)
                                .map_err(|_| ReqError::Io)?;
                            done += n;
                        }
                        Ok(0)
                    })
                }
            }
            VIRTIO_BLK_T_FLUSH => match &self.file {
                Some(f) if !self.read_only => f.sync_data().map(|_| 0).map_err(|_| ReqError::Io),
                _ => Ok(0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = data_len.min(self.id.len());
                writer
                    .write_all(&self.id[..n])
                    .map(|_| n)
                    .map_err(|_| ReqError::Io)
            }
            other => Err(ReqError::Unsupported(other)),
        };
        let (status, written) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(ReqError::Unsupported(t)) => {
                tracing::debug!("virtio-blk: unsupported request type {t}");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(e) => {
                tracing::debug!("virtio-blk: request failed: {e:?}");
                // Partial reads may have landed in guest memory; the count tells the driver.
                (VIRTIO_BLK_S_IOERR, writer.bytes_written())
            }
        };
        if status_w.write_all(&[status as u8]).is_err() {
            return written as u32;
        }
        (written + 1) as u32
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH) | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only && !self.slot {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn disk_slot(&mut self) -> Option<&mut Block> {
        self.slot.then_some(self)
    }

    fn process_queue(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(idx) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.serve(chain, mem);
            if let Err(e) = q.add_used(mem, head, len) {
                tracing::warn!("virtio-blk: cannot complete request: {e}");
                break;
            }
            used = true;
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::{test_mem, TestQueue, NEXT, WRITE};
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn disk(sectors: u64, ro: bool) -> (Block, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "box-vmm-blk-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let mut content = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        for (i, b) in content.iter_mut().enumerate() {
            *b = (i / SECTOR_SIZE as usize) as u8;
        }
        std::fs::write(&p, &content).unwrap();
        (Block::open(&p, ro, "box-disk-0").unwrap(), p)
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn header(mem: &GuestMemoryMmap, type_: u32, sector: u64) {
        mem.write_obj(
            RequestHeader {
                type_,
                _reserved: 0,
                sector,
            },
            GuestAddress(HDR),
        )
        .unwrap();
    }

    /// Runs one request chain; returns (used len, status byte).
    fn run(blk: &mut Block, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> (u32, u8) {
        let tq = TestQueue::new(mem, 0x1000, 16);
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        tq.chain(mem, 0, descs);
        tq.publish(mem, 0);
        let mut qs = [tq.queue()];
        assert!(blk.process_queue(0, &mut qs, mem));
        assert_eq!(tq.used_idx(mem), 1);
        let (_, len) = tq.used_elem(mem, 0);
        (len, mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    #[test]
    fn read_write_flush_getid() {
        let mem = test_mem();
        let (mut blk, p) = disk(8, false);
        assert_eq!(blk.capacity_sectors(), 8);
        // Read sectors 2..4.
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let (len, st) = run(
            &mut blk,
            &mem,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (1025, VIRTIO_BLK_S_OK as u8));
        let mut buf = [0u8; 1024];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 2) && buf[512..].iter().all(|b| *b == 3));
        // Write sector 7.
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 7);
        let (len, st) = run(
            &mut blk,
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK as u8));
        let content = std::fs::read(&p).unwrap();
        assert!(content[7 * 512..].iter().all(|b| *b == 0xab));
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let (_, st) = run(&mut blk, &mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(st, VIRTIO_BLK_S_OK as u8);
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = run(
            &mut blk,
            &mem,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (21, VIRTIO_BLK_S_OK as u8));
        let mut id = [0u8; 10];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"box-disk-0");
        // Data split over several descriptors.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (len, st) = run(
            &mut blk,
            &mem,
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA + 0x1000, 512, true),
                (STATUS, 1, true),
            ],
        );
        assert_eq!((len, st), (1025, VIRTIO_BLK_S_OK as u8));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_only_refuses_writes_and_advertises_ro() {
        let mem = test_mem();
        let (mut blk, p) = disk(4, true);
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        let (len, st) = run(
            &mut blk,
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR as u8));
        assert!(std::fs::read(&p).unwrap()[512..1024]
            .iter()
            .all(|b| *b == 1));
        let (rw, p2) = disk(4, false);
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
        std::fs::remove_file(p).unwrap();
        std::fs::remove_file(p2).unwrap();
    }

    #[test]
    fn out_of_range_and_bad_lengths_are_ioerr() {
        let mem = test_mem();
        let (mut blk, p) = disk(4, false);
        for (sector, len) in [
            (4u64, 512u32),
            (3, 1024),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (0, 100),
        ] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let (_, st) = run(
                &mut blk,
                &mem,
                &[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)],
            );
            assert_eq!(st, VIRTIO_BLK_S_IOERR as u8, "sector {sector} len {len}");
            header(&mem, VIRTIO_BLK_T_OUT, sector);
            let (_, st) = run(
                &mut blk,
                &mem,
                &[(HDR, 16, false), (DATA, len, false), (STATUS, 1, true)],
            );
            assert_eq!(
                st, VIRTIO_BLK_S_IOERR as u8,
                "write sector {sector} len {len}"
            );
        }
        // Last sector exactly: fine.
        header(&mem, VIRTIO_BLK_T_IN, 3);
        let (_, st) = run(
            &mut blk,
            &mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert_eq!(st, VIRTIO_BLK_S_OK as u8);
        header(&mem, 99, 0);
        let (_, st) = run(&mut blk, &mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(st, VIRTIO_BLK_S_UNSUPP as u8);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn malicious_chains_never_panic() {
        let mem = test_mem();
        let (mut blk, p) = disk(4, false);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let mem_end = 16u64 << 20;
        let cases: Vec<Vec<(u64, u32, bool)>> = vec![
            // Data beyond guest memory.
            vec![
                (HDR, 16, false),
                (mem_end - 256, 512, true),
                (STATUS, 1, true),
            ],
            // Address overflow.
            vec![
                (HDR, 16, false),
                (u64::MAX - 10, 512, true),
                (STATUS, 1, true),
            ],
            // Header beyond memory.
            vec![(mem_end + 0x1000, 16, false), (STATUS, 1, true)],
            // Zero-length everything.
            vec![(HDR, 0, false), (DATA, 0, true)],
            // Huge length.
            vec![(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
            // Wrong direction: header write-only, status read-only.
            vec![(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)],
            vec![(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
            // Short header.
            vec![(HDR, 4, false), (STATUS, 1, true)],
        ];
        for c in &cases {
            let tq = TestQueue::new(&mem, 0x1000, 16);
            tq.chain(&mem, 0, c);
            tq.publish(&mem, 0);
            let mut qs = [tq.queue()];
            blk.process_queue(0, &mut qs, &mem);
            assert_eq!(tq.used_idx(&mem), 1, "{c:?}");
        }
        // A descriptor loop: 0 -> 1 -> 0 ...
        let tq = TestQueue::new(&mem, 0x1000, 16);
        tq.set_desc(&mem, 0, HDR, 16, NEXT, 1);
        tq.set_desc(&mem, 1, DATA, 512, NEXT | WRITE, 0);
        tq.publish(&mem, 0);
        let mut qs = [tq.queue()];
        blk.process_queue(0, &mut qs, &mem);
        // Next index past the table, and a head index past the table.
        let tq = TestQueue::new(&mem, 0x1000, 16);
        tq.set_desc(&mem, 0, HDR, 16, NEXT, 200);
        tq.publish(&mem, 0);
        tq.publish(&mem, 999);
        let mut qs = [tq.queue()];
        blk.process_queue(0, &mut qs, &mem);
        // Queue index that doesn't exist.
        assert!(!blk.process_queue(3, &mut qs, &mem));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn config_space_reports_capacity() {
        let (blk, p) = disk(8, false);
        let mut b = [0u8; 8];
        blk.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 8);
        let mut far = [0xffu8; 4];
        blk.read_config(1 << 40, &mut far);
        assert_eq!(far, [0; 4]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn partial_trailing_sector_is_hidden() {
        let p = std::env::temp_dir().join(format!("box-vmm-blk-odd-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let blk = Block::open(&p, true, "x").unwrap();
        assert_eq!(blk.capacity_sectors(), 1);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_slot_serves_only_while_it_holds_a_disk() {
        let mem = test_mem();
        let mut slot = Block::empty_slot("box-slot-0");
        let read = |b: &mut Block| {
            header(&mem, VIRTIO_BLK_T_IN, 0);
            run(
                b,
                &mem,
                &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            )
        };
        assert_eq!(
            read(&mut slot).1,
            VIRTIO_BLK_S_IOERR as u8,
            "empty: nothing to read"
        );
        // FLUSH on an empty slot is harmless.
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let (_, st) = run(&mut slot, &mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert_eq!(st, VIRTIO_BLK_S_OK as u8);

        let (boot, p) = disk(4, false);
        let mut boot = boot;
        assert_eq!(boot.detach(), Err(SlotError::NotASlot));
        assert!(boot.disk_slot().is_none());
        let f = std::fs::OpenOptions::new().read(true).open(&p).unwrap();
        assert_eq!(slot.attach(f, true, "ctr-1"), Ok(4));
        assert_eq!(
            slot.features() & (1 << VIRTIO_BLK_F_RO),
            0,
            "features are fixed at boot"
        );
        let (len, st) = read(&mut slot);
        assert_eq!((len, st), (513, VIRTIO_BLK_S_OK as u8));
        // Read-only attach: writes refused though the driver was never told RO.
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        let (_, st) = run(
            &mut slot,
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert_eq!(st, VIRTIO_BLK_S_IOERR as u8);
        // GET_ID is the attached disk's id.
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        run(
            &mut slot,
            &mem,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        let mut id = [0u8; 5];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"ctr-1");
        let f2 = std::fs::File::open(&p).unwrap();
        assert_eq!(slot.attach(f2, true, "ctr-2"), Err(SlotError::Occupied));
        assert_eq!(slot.detach(), Ok(()));
        assert_eq!(slot.capacity_sectors(), 0);
        assert_eq!(read(&mut slot).1, VIRTIO_BLK_S_IOERR as u8, "emptied");
        assert_eq!(slot.detach(), Err(SlotError::Empty));
        std::fs::remove_file(p).unwrap();
    }
}
