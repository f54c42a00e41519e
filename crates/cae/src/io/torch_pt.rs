//! Writing PyTorch `.pt` files: the zip-of-pickle format that `torch.save(model.state_dict(), path)`
//! produces, so that `torch.load(path)` (with `weights_only=True`, the default since torch 2.6)
//! returns an `OrderedDict` of float32 CPU tensors ready for `model.load_state_dict`.
//!
//! The layout mirrors what torch's `PyTorchStreamWriter` (miniz) writes, record by record:
//!
//! ```text
//! <archive>/data.pkl                 pickle (protocol 2) of the OrderedDict; tensors point at storages
//! <archive>/.format_version          "1": storages are stored in key order
//! <archive>/.storage_alignment       "64"
//! <archive>/byteorder                "little"
//! <archive>/data/0, data/1, ...      raw little-endian f32 storages, one per tensor
//! <archive>/version                  "3\n"
//! <archive>/.data/serialization_id   40 digits derived from the records
//! ```
//!
//! Every record is STORED (no compression), and its data starts on a 64-byte boundary of the
//! file thanks to a filler `FB` field in the local header, as torch does, so `torch.load(...,
//! mmap=True)` can map the storages in place. As with miniz, local headers carry no sizes (a
//! 16-byte data descriptor follows each record's data) and the archive ends with ZIP64 end
//! records. The records are back to back in this order, storages in key order, because torch's
//! `calculate_storage_offsets` loader computes where each storage starts from exactly that.
//!
//! The pickle is, opcode for opcode, what Python's pickler emits for torch's tensor reduction
//! (`torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, the
//! storage as the persistent id `('storage', torch.FloatStorage, key, 'cpu', numel)`); the tests
//! compare it byte for byte with the stdlib pickler driven the same way, and that emulation with
//! the reference file written by PyTorch itself.

use std::path::Path;

use anyhow::{Result, bail};

use crate::io::weights::{HostTensor, StateDict};

/// The archive folder torch uses when it saves to a buffer rather than a named file.
const BUFFER_ARCHIVE_NAME: &str = "archive";

/// Storage data starts at a multiple of this many bytes (torch's default `storage_alignment`).
const ALIGNMENT: usize = 64;

/// The encoding of `dict` as a `.pt` file, with its records under the folder `archive/` (what
/// `torch.save` uses for an in-memory buffer).
///
/// The tensors come out in the `StateDict`'s order, i.e. sorted by name, not in the order of
/// the PyTorch module's parameters; `load_state_dict` matches tensors by key, so the order does
/// not matter to it. The `OrderedDict` carries no `_metadata` (module versions), which the
/// layers of this crate's model (Conv2d, ConvTranspose2d, Linear) do not consult when loading.
pub fn pt_bytes(dict: &StateDict) -> Result<Vec<u8>> {
    pt_bytes_in(dict, BUFFER_ARCHIVE_NAME)
}

/// Writes `dict` to `path` as a `.pt` file (atomically; see [`pt_bytes`] for the content). As
/// `torch.save` does, the records sit under a folder named after the file's stem
/// (`model.pt` -> `model/`), or `archive/` when the path has no usable stem.
pub fn save_pt(path: &Path, dict: &StateDict) -> Result<()> {
    let bytes = pt_bytes_in(dict, &archive_name_for(path))?;
    crate::io::atomic::write_bytes(path, &bytes)
}

fn archive_name_for(path: &Path) -> String {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| !stem.is_empty())
        .unwrap_or(BUFFER_ARCHIVE_NAME)
        .to_string()
}

fn pt_bytes_in(dict: &StateDict, archive_name: &str) -> Result<Vec<u8>> {
    for (name, tensor) in dict {
        check_tensor(name, tensor)?;
    }
    let mut zip = ZipWriter::new(archive_name);
    zip.add("data.pkl", |out| {
        out.extend_from_slice(&state_dict_pickle(dict))
    })?;
    zip.add(".format_version", |out| out.extend_from_slice(b"1"))?;
    zip.add(".storage_alignment", |out| {
        out.extend_from_slice(ALIGNMENT.to_string().as_bytes())
    })?;
    zip.add("byteorder", |out| out.extend_from_slice(b"little"))?;
    for (key, tensor) in dict.values().enumerate() {
        zip.add(&format!("data/{key}"), |out| {
            out.extend(tensor.data.iter().flat_map(|v| v.to_le_bytes()))
        })?;
    }
    zip.add("version", |out| out.extend_from_slice(b"3\n"))?;
    let id = zip.serialization_id();
    zip.add(".data/serialization_id", |out| {
        out.extend_from_slice(id.as_bytes())
    })?;
    zip.finish()
}

fn check_tensor(name: &str, tensor: &HostTensor) -> Result<()> {
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel != Some(tensor.data.len()) {
        bail!(
            "tensor `{name}` has shape {:?} but {} values",
            tensor.shape,
            tensor.data.len()
        );
    }
    Ok(())
}

/// Row-major (contiguous) strides of `shape`, in elements.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

// ---------------------------------------------------------------------------------------------
// The pickle

/// Pickle opcodes (protocol 2), named as in Python's `pickle` module.
mod op {
    pub(crate) const PROTO: u8 = 0x80;
    pub(crate) const GLOBAL: u8 = b'c';
    pub(crate) const BINPUT: u8 = b'q';
    pub(crate) const LONG_BINPUT: u8 = b'r';
    pub(crate) const BINGET: u8 = b'h';
    pub(crate) const LONG_BINGET: u8 = b'j';
    pub(crate) const MARK: u8 = b'(';
    pub(crate) const TUPLE: u8 = b't';
    pub(crate) const TUPLE1: u8 = 0x85;
    pub(crate) const TUPLE2: u8 = 0x86;
    pub(crate) const TUPLE3: u8 = 0x87;
    pub(crate) const EMPTY_TUPLE: u8 = b')';
    pub(crate) const REDUCE: u8 = b'R';
    pub(crate) const BINPERSID: u8 = b'Q';
    pub(crate) const BININT1: u8 = b'K';
    pub(crate) const BININT2: u8 = b'M';
    pub(crate) const BININT: u8 = b'J';
    pub(crate) const LONG1: u8 = 0x8a;
    pub(crate) const BINUNICODE: u8 = b'X';
    pub(crate) const NEWFALSE: u8 = 0x89;
    pub(crate) const SETITEM: u8 = b's';
    pub(crate) const SETITEMS: u8 = b'u';
    pub(crate) const STOP: u8 = b'.';
}

/// Python's pickler writes at most this many dict items per SETITEMS.
const SETITEMS_BATCH: usize = 1000;

/// Objects that Python's pickler writes once, memoizes, and afterwards fetches from the memo
/// (the same function, class or interned string every time).
#[derive(Clone, Copy)]
enum Shared {
    OrderedDict,
    RebuildTensor,
    StorageTag,
    FloatStorage,
    Cpu,
}

/// The pickle of `dict` as `torch.save` writes a state dict: an OrderedDict whose values are
/// `_rebuild_tensor_v2` calls, storage `key` N being `data/N`.
fn state_dict_pickle(dict: &StateDict) -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[op::PROTO, 2]);
    p.shared(Shared::OrderedDict);
    p.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
    p.memoize();
    let entries: Vec<_> = dict.iter().collect();
    for (batch_index, batch) in entries.chunks(SETITEMS_BATCH).enumerate() {
        if batch.len() > 1 {
            p.out.push(op::MARK);
        }
        for (i, (name, tensor)) in batch.iter().enumerate() {
            p.unicode(name);
            p.memoize();
            p.tensor(batch_index * SETITEMS_BATCH + i, tensor);
        }
        p.out.push(if batch.len() > 1 {
            op::SETITEMS
        } else {
            op::SETITEM
        });
    }
    p.out.push(op::STOP);
    p.out
}

/// A minimal pickler that numbers its memo entries the way Python's does (consecutively, in
/// the order objects are first written).
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    memo_len: u32,
    shared: [Option<u32>; 5],
}

impl Pickler {
    /// `_rebuild_tensor_v2(persistent storage, 0, size, stride, False, OrderedDict())`, reduced.
    fn tensor(&mut self, key: usize, tensor: &HostTensor) {
        self.shared(Shared::RebuildTensor);
        self.out.push(op::MARK);
        self.storage_id(key, tensor.data.len());
        self.out.push(op::BINPERSID);
        self.int(0); // storage offset
        self.int_tuple(&tensor.shape);
        self.int_tuple(&contiguous_strides(&tensor.shape));
        self.out.push(op::NEWFALSE); // requires_grad
        self.shared(Shared::OrderedDict); // backward hooks: an empty OrderedDict
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
        self.memoize();
        self.out.push(op::TUPLE);
        self.memoize();
        self.out.push(op::REDUCE);
        self.memoize();
    }

    /// The persistent id `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`.
    fn storage_id(&mut self, key: usize, numel: usize) {
        self.out.push(op::MARK);
        self.shared(Shared::StorageTag);
        self.shared(Shared::FloatStorage);
        self.unicode(&key.to_string());
        self.memoize();
        self.shared(Shared::Cpu);
        self.int(numel as u64);
        self.out.push(op::TUPLE);
        self.memoize();
    }

    /// Writes a shared object the first time (and memoizes it), fetches it from the memo after.
    fn shared(&mut self, which: Shared) {
        if let Some(index) = self.shared[which as usize] {
            self.get(index);
            return;
        }
        match which {
            Shared::OrderedDict => self.global("collections", "OrderedDict"),
            Shared::RebuildTensor => self.global("torch._utils", "_rebuild_tensor_v2"),
            Shared::StorageTag => self.unicode("storage"),
            Shared::FloatStorage => self.global("torch", "FloatStorage"),
            Shared::Cpu => self.unicode("cpu"),
        }
        self.shared[which as usize] = Some(self.memoize());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        for part in [module, name] {
            self.out.extend_from_slice(part.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn unicode(&mut self, text: &str) {
        self.out.push(op::BINUNICODE);
        self.out
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.out.extend_from_slice(text.as_bytes());
    }

    /// A tuple of ints as protocol 2 writes it: `()` unmemoized, TUPLE1..3 for short ones.
    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            self.out.push(op::EMPTY_TUPLE);
            return;
        }
        if values.len() > 3 {
            self.out.push(op::MARK);
        }
        for &v in values {
            self.int(v as u64);
        }
        self.out.push(match values.len() {
            1 => op::TUPLE1,
            2 => op::TUPLE2,
            3 => op::TUPLE3,
            _ => op::TUPLE,
        });
        self.memoize();
    }

    /// The smallest of Python's encodings for a non-negative int.
    fn int(&mut self, value: u64) {
        if let Ok(v) = u8::try_from(value) {
            self.out.extend_from_slice(&[op::BININT1, v]);
        } else if let Ok(v) = u16::try_from(value) {
            self.out.push(op::BININT2);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(value) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, one byte more than the magnitude needs
            // so the sign bit is clear (Python's `encode_long`).
            let len = (64 - value.leading_zeros() as usize) / 8 + 1;
            self.out.extend_from_slice(&[op::LONG1, len as u8]);
            let bytes = u128::from(value).to_le_bytes();
            self.out.extend_from_slice(&bytes[..len]);
        }
    }

    /// Stores the object just written in the next memo slot and returns that slot.
    fn memoize(&mut self) -> u32 {
        let index = self.memo_len;
        match u8::try_from(index) {
            Ok(i) => self.out.extend_from_slice(&[op::BINPUT, i]),
            Err(_) => {
                self.out.push(op::LONG_BINPUT);
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
        self.memo_len += 1;
        index
    }

    fn get(&mut self, index: u32) {
        match u8::try_from(index) {
            Ok(i) => self.out.extend_from_slice(&[op::BINGET, i]),
            Err(_) => {
                self.out.push(op::LONG_BINGET);
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The zip container

/// Zip record signatures and the fields that torch's miniz writer sets.
mod zip {
    pub(crate) const LOCAL_HEADER: u32 = 0x0403_4b50;
    pub(crate) const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
    pub(crate) const CENTRAL_HEADER: u32 = 0x0201_4b50;
    pub(crate) const ZIP64_END: u32 = 0x0606_4b50;
    pub(crate) const ZIP64_LOCATOR: u32 = 0x0706_4b50;
    pub(crate) const END: u32 = 0x0605_4b50;
    /// Bit 3 (sizes and CRC in a data descriptor after the data) and bit 11 (UTF-8 names).
    pub(crate) const FLAGS: u16 = 0x0808;
    pub(crate) const LOCAL_HEADER_LEN: usize = 30;
    /// The extra field's own header: the id `FB` and the length of the filler after it.
    pub(crate) const PADDING_HEADER_LEN: usize = 4;
    /// Version made by / needed in the ZIP64 end record, as miniz writes them.
    pub(crate) const ZIP64_MADE_BY: u16 = 0x031e;
    pub(crate) const ZIP64_NEEDED: u16 = 0x002d;
}

struct CentralEntry {
    name: String,
    crc: u32,
    size: u32,
    header_offset: u32,
}

/// A streaming STORED zip writer laid out like torch's: every record under `<archive>/`,
/// data 64-byte aligned, a data descriptor after each record, ZIP64 end records.
struct ZipWriter {
    out: Vec<u8>,
    archive_name: String,
    entries: Vec<CentralEntry>,
    /// `c10::hash_combine` of the records' names and of their CRC-32s, for the serialization id.
    combined_name_hash: u64,
    combined_crc: u64,
}

impl ZipWriter {
    fn new(archive_name: &str) -> Self {
        Self {
            out: Vec::new(),
            archive_name: archive_name.to_string(),
            entries: Vec::new(),
            combined_name_hash: 0,
            combined_crc: 0,
        }
    }

    /// Adds the record `<archive>/<name>` whose content `fill` appends to the buffer it gets.
    fn add(&mut self, name: &str, fill: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let name = format!("{}/{name}", self.archive_name);
        let header_offset = self.out.len();
        let padding = padding_len(header_offset, name.len());
        self.put_u32(zip::LOCAL_HEADER);
        self.put_u16(0); // version needed
        self.put_u16(zip::FLAGS);
        self.put_u16(0); // method: STORED
        self.put_u32(0); // time and date (miniz writes 0)
        self.put_u32(0); // CRC-32, in the data descriptor instead
        self.put_u32(0); // compressed size, idem
        self.put_u32(0); // uncompressed size, idem
        self.put_u16(u16::try_from(name.len())?);
        self.put_u16(u16::try_from(zip::PADDING_HEADER_LEN + padding)?);
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"FB");
        self.put_u16(padding as u16);
        self.out.resize(self.out.len() + padding, b'Z');

        let data_start = self.out.len();
        debug_assert_eq!(data_start % ALIGNMENT, 0);
        fill(&mut self.out);
        let mut crc = flate2::Crc::new();
        crc.update(&self.out[data_start..]);
        let crc = crc.sum();
        let size = fits_u32(self.out.len() - data_start, &name)?;
        self.put_u32(zip::DATA_DESCRIPTOR);
        self.put_u32(crc);
        self.put_u32(size); // compressed
        self.put_u32(size); // uncompressed

        self.combined_name_hash = hash_combine(self.combined_name_hash, fnv1a(name.as_bytes()));
        self.combined_crc = hash_combine(self.combined_crc, u64::from(crc));
        self.entries.push(CentralEntry {
            header_offset: fits_u32(header_offset, &name)?,
            name,
            crc,
            size,
        });
        Ok(())
    }

    /// Torch's `.data/serialization_id` for the records so far: 20 digits of a combined hash of
    /// the record names, then 20 of the combined CRC-32s of their contents. The CRC half is
    /// torch's formula exactly; torch hashes the names with the implementation-defined
    /// `std::hash` in hash-set order, which cannot be reproduced portably, so the name half
    /// uses FNV-1a in record order. Torch only logs the id; it identifies the content.
    fn serialization_id(&self) -> String {
        format!("{:020}{:020}", self.combined_name_hash, self.combined_crc)
    }

    /// Appends the central directory and the (ZIP64 and classic) end records.
    fn finish(mut self) -> Result<Vec<u8>> {
        let directory_offset = self.out.len();
        let entries = std::mem::take(&mut self.entries);
        for entry in &entries {
            self.central_header(entry)?;
        }
        let directory_len = self.out.len() - directory_offset;
        let zip64_end_offset = self.out.len() as u64;
        let count = entries.len() as u64;

        self.put_u32(zip::ZIP64_END);
        self.put_u64(44); // size of the rest of this record
        self.put_u16(zip::ZIP64_MADE_BY);
        self.put_u16(zip::ZIP64_NEEDED);
        self.put_u32(0); // this disk
        self.put_u32(0); // disk of the central directory
        self.put_u64(count); // entries on this disk
        self.put_u64(count); // entries in all
        self.put_u64(directory_len as u64);
        self.put_u64(directory_offset as u64);

        self.put_u32(zip::ZIP64_LOCATOR);
        self.put_u32(0); // disk of the ZIP64 end record
        self.put_u64(zip64_end_offset);
        self.put_u32(1); // number of disks

        let count16 = u16::try_from(count).unwrap_or(u16::MAX);
        self.put_u32(zip::END);
        self.put_u16(0); // this disk
        self.put_u16(0); // disk of the central directory
        self.put_u16(count16);
        self.put_u16(count16);
        self.put_u32(fits_u32(directory_len, "the central directory")?);
        self.put_u32(fits_u32(directory_offset, "the central directory")?);
        self.put_u16(0); // comment length
        Ok(self.out)
    }

    fn central_header(&mut self, entry: &CentralEntry) -> Result<()> {
        self.put_u32(zip::CENTRAL_HEADER);
        self.put_u16(0); // version made by
        self.put_u16(0); // version needed
        self.put_u16(zip::FLAGS);
        self.put_u16(0); // method: STORED
        self.put_u32(0); // time and date
        self.put_u32(entry.crc);
        self.put_u32(entry.size); // compressed
        self.put_u32(entry.size); // uncompressed
        self.put_u16(u16::try_from(entry.name.len())?);
        self.put_u16(0); // extra field length
        self.put_u16(0); // comment length
        self.put_u16(0); // disk number
        self.put_u16(0); // internal attributes
        self.put_u32(0); // external attributes
        self.put_u32(entry.header_offset);
        self.out.extend_from_slice(entry.name.as_bytes());
        Ok(())
    }

    fn put_u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Filler bytes after the `FB` header so that data of a record whose local header starts at
/// `header_offset` begins on an [`ALIGNMENT`] boundary (torch's `detail::getPadding`).
fn padding_len(header_offset: usize, name_len: usize) -> usize {
    let start = header_offset + zip::LOCAL_HEADER_LEN + name_len + zip::PADDING_HEADER_LEN;
    start.next_multiple_of(ALIGNMENT) - start
}

/// Offsets and sizes past 4 GiB would need ZIP64 extra fields, which this writer omits.
fn fits_u32(value: usize, what: &str) -> Result<u32> {
    match u32::try_from(value) {
        Ok(v) if v != u32::MAX => Ok(v),
        _ => bail!("{what} lies beyond 4 GiB, which .pt export does not support"),
    }
}

/// `c10::hash_combine`, the mixing torch uses for its serialization id.
fn hash_combine(seed: u64, value: u64) -> u64 {
    seed ^ value
        .wrapping_add(0x9e37_79b9)
        .wrapping_add(seed << 6)
        .wrapping_add(seed >> 2)
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[16, 3, 3, 3]), vec![27, 9, 3, 1]);
        assert_eq!(contiguous_strides(&[200, 4096]), vec![4096, 1]);
        assert_eq!(contiguous_strides(&[5]), vec![1]);
        assert!(contiguous_strides(&[]).is_empty());
    }

    #[test]
    fn ints_use_pythons_smallest_encoding() {
        let encode = |v| {
            let mut p = Pickler::default();
            p.int(v);
            p.out
        };
        assert_eq!(encode(255), vec![b'K', 255]);
        assert_eq!(encode(256), vec![b'M', 0, 1]);
        assert_eq!(encode(65536), vec![b'J', 0, 0, 1, 0]);
        assert_eq!(encode(0x7fff_ffff), vec![b'J', 0xff, 0xff, 0xff, 0x7f]);
        // Python: pickle.dumps(2**31, 2)[2:-1] == b'\x8a\x05\x00\x00\x00\x80\x00'
        assert_eq!(encode(1 << 31), vec![0x8a, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(encode(u64::MAX)[..2], [0x8a, 9]);
    }

    #[test]
    fn padding_matches_the_reference_file() {
        // seed_latent200_init.pt: data.pkl's header at 0 has 2 filler bytes, data/0's at 2902 has 46.
        assert_eq!(padding_len(0, "seed_latent200_init/data.pkl".len()), 2);
        assert_eq!(padding_len(2902, "seed_latent200_init/data/0".len()), 46);
    }

    #[test]
    fn hash_combine_matches_c10() {
        // The CRC half of the reference file's serialization id is reproduced in tests/torch_pt.rs;
        // here, the formula on small values: seed ^ (value + 0x9e3779b9 + (seed << 6) + (seed >> 2)).
        assert_eq!(hash_combine(0, 1), 0x9e37_79ba);
        assert_eq!(hash_combine(4, 0), 4 ^ (0x9e37_79b9 + 256 + 1));
    }
}
