//! A pre-read check of HDF5 files against the one known way a corrupt file makes the bundled
//! HDF5 C library (2.2.0, through hdf5-metno) loop forever instead of returning an error.
//!
//! # The hang
//!
//! Variable-length strings (our string attributes) live in global heap collections ("GCOL"; HDF5
//! File Format Specification, section III.E "Global Heap"). When HDF5 loads a collection,
//! `H5HG__cache_heap_deserialize` (H5HGcache.c) walks its objects with
//! `while (p < chunk + size)`: an object's header is index (u16), reference count (u16), 4
//! reserved bytes and the object size ("size of lengths" bytes), and the next object starts
//! `need` bytes later, `need = OBJHDR + ALIGN8(size)` for index > 0 and `need = size` for index 0
//! (the free space), computed in `size_t`. When `need` is 0 the pointer never moves: index 0 with
//! size 0, or index > 0 with a size in `[2^64-23, 2^64-16]` (the sum wraps to 0). A corrupted
//! size typically makes the walk land in the zero-filled free space, which reads as exactly
//! "index 0, size 0". The call then spins forever while holding HDF5's global lock, so it cannot
//! be interrupted or timed out from inside the process.
//!
//! # The check
//!
//! [`check_global_heaps`] finds every "GCOL" in the file (HDF5 checks that magic before the walk,
//! so every collection it can walk starts with it; the file is read once, in 1 MiB pieces) and
//! replays the walk exactly, including the checks that make HDF5 fail cleanly (those files are
//! left to HDF5, which reports them). A file is refused only when the replay reaches an object
//! with `need == 0`. It does not need to know which collections are referenced, so a "GCOL" that
//! happens to occur in image data is replayed too; it is refused only if it would also spin.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::data::{DataError, Result};

/// The HDF5 file signature, at offset 0 or at 512, 1024, 2048, … (after a user block).
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// The magic of a global heap collection.
const MAGIC: &[u8; 4] = b"GCOL";
/// `H5HG_MINSIZE`: HDF5 refuses smaller collections before walking them.
const MIN_SIZE: u64 = 4096;
/// The piece of the file searched at once.
const CHUNK: usize = 1 << 20;
/// The most bytes of a collection held at once while replaying it.
const WINDOW: usize = 64 * 1024;

/// Refuses an HDF5 file on which HDF5 2.2.0 would loop forever while reading a variable-length
/// string (see the [module documentation](self)); call it before `hdf5::File::open` on a file
/// from outside.
///
/// Files that are not HDF5, or whose "size of lengths" is not 2, 4 or 8, pass: HDF5 reports them.
/// Memory is bounded (1 MiB of file plus a 64 KiB window) and the file is read once, plus the
/// bytes of each collection candidate.
///
/// Errors: [`DataError::Io`] when the file cannot be read, [`DataError::Layout`] naming the
/// collection's and the object's byte offsets when HDF5 would loop forever on the file.
pub fn check_global_heaps(path: &Path) -> Result<()> {
    check_with_chunk(path, CHUNK)
}

/// [`check_global_heaps`] reading `chunk` bytes at a time (tests use tiny pieces).
fn check_with_chunk(path: &Path, chunk: usize) -> Result<()> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let Some(sl) = size_of_lengths(&file, len).map_err(io)? else {
        return Ok(());
    };
    let mut window = Window::new(&file, len);
    let mut piece = vec![0u8; chunk.max(MAGIC.len())];
    let mut pos = 0u64;
    while pos < len {
        let n = piece.len().min((len - pos) as usize);
        read_at(&file, pos, &mut piece[..n]).map_err(io)?;
        for i in memchr::memmem::find_iter(&piece[..n], MAGIC) {
            let gcol = pos + i as u64;
            if let Some(spin) = replay(&mut window, gcol, sl).map_err(io)? {
                return Err(spin.error(path, gcol));
            }
        }
        if pos + n as u64 == len {
            break;
        }
        // Overlap by 3 bytes, so a magic split between two pieces is found (once) in the second.
        pos += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(())
}

/// The superblock's "size of lengths" when it is 2, 4 or 8; `None` without a superblock or with
/// another size. The superblock is looked for at 0, 512, 1024, … like HDF5 does; the size is byte
/// 14 of a version 0/1 superblock and byte 10 of a version 2/3 one (File Format Specification,
/// section II.A "Superblock").
fn size_of_lengths(file: &File, len: u64) -> std::io::Result<Option<usize>> {
    let mut at = 0u64;
    while at + 16 <= len {
        let mut head = [0u8; 16];
        read_at(file, at, &mut head)?;
        if head[..8] == SIGNATURE[..] {
            let sl = if head[8] <= 1 { head[14] } else { head[10] };
            return Ok(matches!(sl, 2 | 4 | 8).then_some(usize::from(sl)));
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    Ok(None)
}

/// An object on which `H5HG__cache_heap_deserialize` spins.
#[derive(Debug)]
struct Spin {
    /// File offset of the object header.
    object: u64,
    /// Its index field.
    index: u16,
    /// Its size field.
    size: u64,
}

impl Spin {
    fn error(&self, path: &Path, gcol: u64) -> DataError {
        DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "corrupt HDF5 global heap collection at byte {gcol:#x}: the object at byte {:#x} \
                 (index {}, size {:#x}) has length 0, so HDF5 would loop forever reading this \
                 file; refusing it",
                self.object, self.index, self.size
            ),
        }
    }
}

/// `H5HG_ALIGN` in 64-bit `size_t` arithmetic (wrapping like C).
fn align8(x: u64) -> u64 {
    x.wrapping_add(7) / 8 * 8
}

/// A little-endian unsigned integer of 2, 4 or 8 bytes.
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Replays the object walk of `H5HG__cache_heap_deserialize` (HDF5 2.2.0) over the collection
/// candidate at file offset `gcol`, with "size of lengths" `sl`. `Some` when it reaches an object
/// whose `need` is 0 (HDF5 would loop forever); `None` when the walk ends or HDF5 would return an
/// error (wrong version, too small, past the end of the file, an object overrunning it).
fn replay(window: &mut Window<'_>, gcol: u64, sl: usize) -> std::io::Result<Option<Spin>> {
    let head = 8 + sl as u64; // magic, version, 3 reserved | index, refs, 4 reserved; + size
    let (hdr, objhdr) = (align8(head), align8(head));
    if window.len < head || gcol > window.len - head {
        return Ok(None);
    }
    let h = window.at(gcol, head as usize)?;
    if h[4] != 1 {
        return Ok(None);
    }
    let size = le(&h[8..]);
    if size < MIN_SIZE || size > window.len - gcol {
        return Ok(None);
    }
    let end = gcol + size;
    let mut p = gcol + hdr;
    while p < end {
        if objhdr > end - p {
            break; // the tail is taken as free space
        }
        let o = window.at(p, head as usize)?;
        let index = u16::from_le_bytes([o[0], o[1]]);
        let osize = le(&o[8..]);
        let need = if index > 0 {
            objhdr.wrapping_add(align8(osize))
        } else {
            osize
        };
        if need == 0 {
            return Ok(Some(Spin {
                object: p,
                index,
                size: osize,
            }));
        }
        if need > end - p {
            break; // H5_IS_BUFFER_OVERFLOW: HDF5 reports an error
        }
        p += need;
    }
    Ok(None)
}

/// Reads `buf.len()` bytes at file offset `at`.
fn read_at(mut file: &File, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(buf)
}

/// Up to [`WINDOW`] bytes of a file, reloaded when a read falls outside them.
struct Window<'f> {
    file: &'f File,
    /// The file's length.
    len: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, len: u64) -> Self {
        Self {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The `n` (≤ [`WINDOW`]) bytes at `at`; the caller knows that they lie inside the file.
    fn at(&mut self, at: u64, n: usize) -> std::io::Result<&[u8]> {
        let loaded = self.start + self.buf.len() as u64;
        if at < self.start || at + n as u64 > loaded {
            let take = (self.len - at).min(WINDOW as u64) as usize;
            self.buf.resize(take, 0);
            read_at(self.file, at, &mut self.buf)?;
            self.start = at;
        }
        let i = (at - self.start) as usize;
        Ok(&self.buf[i..i + n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h5images;
    use ndarray::Array4;

    /// A sample file from our writer, with string attributes (so a global heap collection).
    fn seed(path: &Path) -> Vec<u8> {
        let images = Array4::from_shape_fn((2, 3, 3, 1), |(i, y, x, _)| (i + y + x) as u8);
        let attrs = [("sampler", "ddim50"), ("checkpoint", "runs/x/ckpt-000100")];
        h5images::write_images(path, images.view(), None, &attrs).unwrap();
        std::fs::read(path).unwrap()
    }

    /// The offset of the only "GCOL" of `bytes`, the collection's size, the offsets of its
    /// objects (in order; the last is the free space, index 0).
    fn layout(bytes: &[u8]) -> (usize, usize, Vec<usize>) {
        let hits: Vec<usize> = memchr::memmem::find_iter(bytes, MAGIC).collect();
        assert_eq!(hits.len(), 1, "one collection");
        let gcol = hits[0];
        let size = le(&bytes[gcol + 8..gcol + 16]) as usize;
        let (mut p, mut objects) = (gcol + 16, Vec::new());
        while p + 16 <= gcol + size {
            objects.push(p);
            let (index, osize) = (le(&bytes[p..p + 2]), le(&bytes[p + 8..p + 16]));
            if index == 0 {
                break;
            }
            p += 16 + align8(osize) as usize;
        }
        (gcol, size, objects)
    }

    fn set_size(bytes: &mut [u8], object: usize, size: u64) {
        bytes[object + 8..object + 16].copy_from_slice(&size.to_le_bytes());
    }

    /// Writes `bytes` next to `path` as `name` and checks it.
    fn check_bytes(path: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, Result<()>) {
        let out = path.with_file_name(name);
        std::fs::write(&out, bytes).unwrap();
        let result = check_global_heaps(&out);
        for chunk in [4, 7, 64, 4099] {
            assert_eq!(
                check_with_chunk(&out, chunk).is_err(),
                result.is_err(),
                "{name}, pieces of {chunk}"
            );
        }
        (out, result)
    }

    fn assert_refused(result: Result<()>, name: &str, object: usize) {
        let msg = result.unwrap_err().to_string();
        assert!(
            msg.contains(name)
                && msg.contains("loop forever")
                && msg.contains(&format!("object at byte {object:#x}")),
            "{msg}"
        );
    }

    #[test]
    fn our_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.h5");
        let bytes = seed(&path);
        let (gcol, size, objects) = layout(&bytes);
        assert!(size >= 4096 && objects.len() >= 3, "{gcol:#x} {objects:?}");
        check_global_heaps(&path).unwrap();
        for chunk in [4, 5, 17, 4096] {
            check_with_chunk(&path, chunk).unwrap();
        }
        // Not HDF5 at all, or empty: left to HDF5.
        check_bytes(&path, "text.h5", b"GCOL\x01 not an HDF5 file")
            .1
            .unwrap();
        check_bytes(&path, "empty.h5", b"").1.unwrap();
    }

    #[test]
    fn a_size_landing_in_the_free_space_is_refused_before_hdf5_reads_it() {
        // As /work/notes/hang1.h5: object 1's size is corrupted so that the next header is read
        // from the zero-filled free space ("index 0, size 0").
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.h5");
        let mut bytes = seed(&path);
        let (gcol, size, objects) = layout(&bytes);
        let free = *objects.last().unwrap();
        let target = free + 16;
        assert!(target + 16 <= gcol + size, "free space too small");
        assert!(bytes[target..target + 16].iter().all(|&b| b == 0));
        set_size(&mut bytes, objects[0], (target - objects[0] - 16) as u64);
        let (bad, result) = check_bytes(&path, "hang1.h5", &bytes);
        assert_refused(result, "hang1.h5", target);
        // The readers check first, so they return the error instead of hanging.
        for err in [
            h5images::open(&bad).map(|_| ()).unwrap_err(),
            h5images::read_images(&bad, "images", None)
                .map(|_| ())
                .unwrap_err(),
            crate::data::check_dataset(&bad).map(|_| ()).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(
                msg.contains("hang1.h5") && msg.contains("loop forever"),
                "{msg}"
            );
        }
        // Behind a 512-byte user block the superblock is found at 512.
        let mut shifted = vec![0u8; 512];
        shifted.extend_from_slice(&bytes);
        let (_, result) = check_bytes(&path, "shifted.h5", &shifted);
        assert_refused(result, "shifted.h5", target + 512);
    }

    #[test]
    fn a_size_wrapping_need_to_zero_and_an_empty_free_object_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.h5");
        let bytes = seed(&path);
        let (_, _, objects) = layout(&bytes);
        // 16 + ALIGN8(2^64 - 16) wraps to 0 (and so do sizes down to 2^64 - 23).
        for (i, size) in [(1, u64::MAX - 15), (0, u64::MAX - 22)] {
            let mut wrap = bytes.clone();
            set_size(&mut wrap, objects[i], size);
            let (_, result) = check_bytes(&path, "wrap.h5", &wrap);
            assert_refused(result, "wrap.h5", objects[i]);
        }
        // 2^64 - 24 is just below the range: `need` is 2^64 - 8, an overrun HDF5 reports.
        let mut overrun = bytes.clone();
        set_size(&mut overrun, objects[1], u64::MAX - 23);
        check_bytes(&path, "overrun.h5", &overrun).1.unwrap();
        // Index 0 with size 0 as the first object.
        let mut empty = bytes.clone();
        empty[objects[0]..objects[0] + 2].fill(0);
        set_size(&mut empty, objects[0], 0);
        let (_, result) = check_bytes(&path, "empty0.h5", &empty);
        assert_refused(result, "empty0.h5", objects[0]);
        // A collection HDF5 refuses before walking it (version, size) is left to HDF5.
        let gcol = objects[0] - 16;
        for (at, value) in [(gcol + 4, 2u8), (gcol + 9, 0)] {
            let mut other = empty.clone();
            other[at] = value;
            check_bytes(&path, "refused.h5", &other).1.unwrap();
        }
    }

    /// A bare superblock (version `version`, "size of lengths" `sl`) and, at 0x100, a collection
    /// of 4096 bytes holding one object of 3 bytes with its size field set to `size`, then free
    /// space. Not a readable HDF5 file; the check only needs these bytes.
    fn synthetic(version: u8, sl: usize, size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x100 + 4096];
        b[..8].copy_from_slice(SIGNATURE);
        b[8] = version;
        b[if version <= 1 { 14 } else { 10 }] = sl as u8;
        b[0x100..0x104].copy_from_slice(MAGIC);
        b[0x104] = 1;
        b[0x108..0x108 + sl].copy_from_slice(&4096u64.to_le_bytes()[..sl]);
        let obj = 0x110;
        b[obj] = 1;
        b[obj + 8..obj + 8 + sl].copy_from_slice(&size.to_le_bytes()[..sl]);
        let free = obj + 16 + 8;
        b[free + 8..free + 8 + sl]
            .copy_from_slice(&(0x100 + 4096 - free as u64).to_le_bytes()[..sl]);
        b
    }

    #[test]
    fn every_superblock_version_and_size_of_lengths_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        for (version, sl) in [(0, 8), (1, 4), (2, 2), (3, 4), (3, 8)] {
            let (_, ok) = check_bytes(&path, "syn.h5", &synthetic(version, sl, 3));
            ok.unwrap();
            // Size 17 moves the walk to 0x138, inside the zero-filled free space.
            let (_, bad) = check_bytes(&path, "syn.h5", &synthetic(version, sl, 17));
            assert_refused(bad, "syn.h5", 0x138);
        }
        // A "size of lengths" HDF5 would refuse leaves the file to HDF5.
        check_bytes(&path, "syn.h5", &synthetic(2, 3, 17))
            .1
            .unwrap();
    }
}
