//! Synthetic CIFAR-10 archives with the exact layout of the published one,
//! written the way Python 2 `cPickle.dump(obj, f, 2)` writes them, for tests.
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::archive::{CLASS_NAMES, META_MEMBER, ROW_LEN, TEST_MEMBER, TRAIN_MEMBERS};

/// A complete, valid archive with `per_batch` images in each of the six
/// batches; pixels and labels are pseudo-random, determined by `seed`.
pub fn archive(per_batch: usize, seed: u64) -> Vec<u8> {
    Builder::new(per_batch, seed).build()
}

/// The contents of one synthetic batch pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchContent {
    /// `'batch_label'`, e.g. `training batch 1 of 5`.
    pub batch_label: String,
    /// `'labels'`.
    pub labels: Vec<i64>,
    /// Number of rows of `'data'`.
    pub rows: usize,
    /// Bytes per row of `'data'` (3072 in the real format).
    pub row_len: usize,
    /// `'data'`, row-major, `rows * row_len` bytes.
    pub data: Vec<u8>,
    /// `'filenames'`.
    pub filenames: Vec<String>,
}

impl BatchContent {
    /// The batch as a Python 2 dict, keys in the order of the real
    /// pickles (`batch_label`, `labels`, `data`, `filenames`).
    pub fn to_py2(&self) -> Py2 {
        let text = |s: &str| Py2::Str(s.as_bytes().to_vec());
        Py2::Dict(vec![
            (text("batch_label"), text(&self.batch_label)),
            (
                text("labels"),
                Py2::List(self.labels.iter().map(|&l| Py2::Int(l)).collect()),
            ),
            (
                text("data"),
                Py2::U8Matrix {
                    rows: self.rows,
                    cols: self.row_len,
                    data: self.data.clone(),
                },
            ),
            (
                text("filenames"),
                Py2::List(self.filenames.iter().map(|f| text(f)).collect()),
            ),
        ])
    }
}

/// Builds synthetic archives, optionally broken in one of the ways the
/// reader must detect. Batch `index` 0..=4 is `data_batch_{index+1}`,
/// index 5 is `test_batch`.
#[derive(Debug, Clone)]
pub struct Builder {
    per_batch: usize,
    seed: u64,
    row_len: usize,
    label_count: Option<usize>,
    first_label: Option<i64>,
    num_vis: i64,
    label_names: Vec<String>,
    omitted: Vec<String>,
    replaced: Vec<(String, Vec<u8>)>,
    extra: Vec<(String, Vec<u8>)>,
    reversed: bool,
}

impl Builder {
    /// A valid archive: `per_batch` images per batch, data from `seed`.
    pub fn new(per_batch: usize, seed: u64) -> Self {
        Builder {
            per_batch,
            seed,
            row_len: ROW_LEN,
            label_count: None,
            first_label: None,
            num_vis: ROW_LEN as i64,
            label_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
            omitted: Vec::new(),
            replaced: Vec::new(),
            extra: Vec::new(),
            reversed: false,
        }
    }

    /// Leaves tar member `member` (e.g. [`TEST_MEMBER`]) out.
    pub fn omit(mut self, member: &str) -> Self {
        self.omitted.push(member.to_string());
        self
    }

    /// Makes every batch's `data` rows `row_len` bytes long.
    pub fn row_len(mut self, row_len: usize) -> Self {
        self.row_len = row_len;
        self
    }

    /// Gives every batch `count` labels (instead of one per row).
    pub fn label_count(mut self, count: usize) -> Self {
        self.label_count = Some(count);
        self
    }

    /// Sets the first label of every batch to `label`.
    pub fn first_label(mut self, label: i64) -> Self {
        self.first_label = Some(label);
        self
    }

    /// Sets `num_vis` in `batches.meta`.
    pub fn num_vis(mut self, num_vis: i64) -> Self {
        self.num_vis = num_vis;
        self
    }

    /// Sets `label_names` in `batches.meta`.
    pub fn label_names(mut self, names: &[&str]) -> Self {
        self.label_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Replaces the bytes of tar member `member` by `bytes`.
    pub fn replace(mut self, member: &str, bytes: Vec<u8>) -> Self {
        self.replaced.push((member.to_string(), bytes));
        self
    }

    /// Adds an unrelated member `name` holding `bytes`.
    pub fn extra(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.extra.push((name.to_string(), bytes));
        self
    }

    /// Writes the members in reverse order.
    pub fn reversed(mut self) -> Self {
        self.reversed = true;
        self
    }

    /// The content of batch `index` (0..=4: `data_batch_{index+1}`,
    /// 5: `test_batch`), as written to the archive.
    pub fn batch_content(&self, index: usize) -> BatchContent {
        let mut rng =
            SplitMix64(self.seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        let data = (0..self.per_batch * self.row_len)
            .map(|_| rng.next() as u8)
            .collect();
        let count = self.label_count.unwrap_or(self.per_batch);
        let mut labels: Vec<i64> = (0..count).map(|_| (rng.next() % 10) as i64).collect();
        if let (Some(label), Some(first)) = (self.first_label, labels.first_mut()) {
            *first = label;
        }
        let batch_label = match index {
            0..=4 => format!("training batch {} of 5", index + 1),
            _ => "testing batch 1 of 1".to_string(),
        };
        BatchContent {
            batch_label,
            labels,
            rows: self.per_batch,
            row_len: self.row_len,
            data,
            filenames: (0..self.per_batch)
                .map(|i| format!("synthetic_{index}_{i:06}.png"))
                .collect(),
        }
    }

    /// `batches.meta` as a Python 2 dict, keys in the real order.
    pub fn meta(&self) -> Py2 {
        let text = |s: &str| Py2::Str(s.as_bytes().to_vec());
        Py2::Dict(vec![
            (text("num_cases_per_batch"), Py2::Int(self.per_batch as i64)),
            (
                text("label_names"),
                Py2::List(self.label_names.iter().map(|n| text(n)).collect()),
            ),
            (text("num_vis"), Py2::Int(self.num_vis)),
        ])
    }

    /// The tar members (name, bytes) in the order they are written.
    pub fn members(&self) -> Vec<(String, Vec<u8>)> {
        let batches = TRAIN_MEMBERS.iter().chain([&TEST_MEMBER]).enumerate();
        let mut members: Vec<(String, Vec<u8>)> = batches
            .map(|(i, m)| (m.to_string(), cpickle2(&self.batch_content(i).to_py2())))
            .collect();
        members.push((META_MEMBER.to_string(), cpickle2(&self.meta())));
        members.push((
            "cifar-10-batches-py/readme.html".to_string(),
            b"<html><body>synthetic CIFAR-10</body></html>\n".to_vec(),
        ));
        members.retain(|(name, _)| !self.omitted.contains(name));
        for (name, bytes) in &self.replaced {
            if let Some(member) = members.iter_mut().find(|(n, _)| n == name) {
                member.1 = bytes.clone();
            }
        }
        members.extend(self.extra.iter().cloned());
        if self.reversed {
            members.reverse();
        }
        members
    }

    /// The `.tar.gz` bytes.
    ///
    /// # Panics
    /// If an [`extra`](Self::extra) member name is not a valid tar path
    /// (e.g. contains `..`).
    pub fn build(&self) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_mtime(1_244_000_000);
        tar.append_data(&mut dir, "cifar-10-batches-py/", std::io::empty())
            .expect("directory entry");
        for (name, bytes) in self.members() {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            header.set_mtime(1_244_000_000);
            tar.append_data(&mut header, &name, bytes.as_slice())
                .expect("member names are valid tar paths");
        }
        let tar = tar.into_inner().expect("writing to a Vec cannot fail");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar).expect("writing to a Vec cannot fail");
        gz.finish().expect("writing to a Vec cannot fail")
    }
}

/// A Python 2 value, as far as CIFAR-10 pickles need them.
#[derive(Debug, Clone, PartialEq)]
pub enum Py2 {
    /// `int`.
    Int(i64),
    /// `str` (a byte string in Python 2).
    Str(Vec<u8>),
    /// `list`.
    List(Vec<Py2>),
    /// `dict`, pickled in the given order.
    Dict(Vec<(Py2, Py2)>),
    /// A numpy `uint8` array of shape `(rows, cols)`, C order. `data` is
    /// written as is, even if its length is not `rows * cols`.
    U8Matrix {
        /// First dimension.
        rows: usize,
        /// Second dimension.
        cols: usize,
        /// Row-major bytes.
        data: Vec<u8>,
    },
}

/// Pickles `value` byte for byte as Python 2.7 `cPickle.dumps(value, 2)`
/// (with numpy 1.x for arrays) does for a dict built by a script.
///
/// cPickle's memo (`BINPUT`, numbered from 1; `LONG_BINPUT` from 256)
/// depends on reference counts in the producing process: it skips objects
/// referenced only once and strings shorter than 2 bytes. This writer
/// follows the common case, checked against real cPickle output: the dict,
/// non-empty lists, dict keys (literals), list items of 2+ bytes, globals
/// and `REDUCE` results are memoized; string dict values (computed, held
/// only by the dict), empty lists and the temporaries of numpy's
/// `__reduce__` are not. `APPENDS`/`SETITEMS` come in batches of 1000.
/// The memo never changes the unpickled value.
pub fn cpickle2(value: &Py2) -> Vec<u8> {
    let mut pickler = Pickler {
        out: vec![PROTO, 2],
        memo_len: 0,
    };
    pickler.save(value);
    pickler.out.push(STOP);
    pickler.out
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const NONE: u8 = b'N';
const NEWFALSE: u8 = 0x89;
const BATCHSIZE: usize = 1000;

struct Pickler {
    out: Vec<u8>,
    memo_len: u32,
}

impl Pickler {
    fn save(&mut self, value: &Py2) {
        match value {
            Py2::Int(v) => self.int(*v),
            Py2::Str(s) => self.string(s, true),
            Py2::List(items) => {
                self.out.push(EMPTY_LIST);
                if !items.is_empty() {
                    self.put();
                }
                self.batched(items, APPEND, APPENDS, Self::save);
            }
            Py2::Dict(pairs) => {
                self.out.push(EMPTY_DICT);
                self.put();
                self.batched(pairs, SETITEM, SETITEMS, |p, (k, v)| {
                    p.save(k);
                    match v {
                        Py2::Str(s) => p.string(s, false),
                        v => p.save(v),
                    }
                });
            }
            Py2::U8Matrix { rows, cols, data } => self.u8_matrix(*rows, *cols, data),
        }
    }

    /// Memoizes the object just written.
    fn put(&mut self) {
        self.memo_len += 1;
        match u8::try_from(self.memo_len) {
            Ok(id) => self.out.extend([BINPUT, id]),
            Err(_) => {
                self.out.push(LONG_BINPUT);
                self.out.extend(self.memo_len.to_le_bytes());
            }
        }
    }

    fn batched<T>(&mut self, items: &[T], one: u8, many: u8, save: fn(&mut Self, &T)) {
        for chunk in items.chunks(BATCHSIZE) {
            if chunk.len() > 1 {
                self.out.push(MARK);
            }
            chunk.iter().for_each(|item| save(self, item));
            self.out.push(if chunk.len() > 1 { many } else { one });
        }
    }

    fn int(&mut self, v: i64) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend([b'K', b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(b'M');
            self.out.extend(w.to_le_bytes());
        } else if let Ok(d) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend(d.to_le_bytes());
        } else {
            self.out.extend(format!("I{v}\n").into_bytes());
        }
    }

    fn string(&mut self, s: &[u8], memoize: bool) {
        match u8::try_from(s.len()) {
            Ok(n) => self.out.extend([b'U', n]),
            Err(_) => {
                self.out.push(b'T');
                self.out.extend((s.len() as u32).to_le_bytes());
            }
        }
        self.out.extend_from_slice(s);
        if memoize && s.len() >= 2 {
            self.put();
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(GLOBAL);
        self.out.extend(format!("{module}\n{name}\n").into_bytes());
        self.put();
    }

    /// numpy 1.x `ndarray.__reduce__` of a C-order `uint8` array.
    fn u8_matrix(&mut self, rows: usize, cols: usize, data: &[u8]) {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.global("numpy", "ndarray");
        self.int(0);
        self.out.push(TUPLE1);
        self.string(b"b", false);
        self.out.extend([TUPLE3, REDUCE]);
        self.put();
        // state: (1, (rows, cols), dtype('u1'), False, data)
        self.out.push(MARK);
        self.int(1);
        self.int(rows as i64);
        self.int(cols as i64);
        self.out.push(TUPLE2);
        self.global("numpy", "dtype");
        self.string(b"u1", false);
        self.int(0);
        self.int(1);
        self.out.extend([TUPLE3, REDUCE]);
        self.put();
        // dtype state: (3, '|', None, None, None, -1, -1, 0)
        self.out.push(MARK);
        self.int(3);
        self.string(b"|", false);
        self.out.extend([NONE, NONE, NONE]);
        self.int(-1);
        self.int(-1);
        self.int(0);
        self.out.extend([TUPLE, BUILD, NEWFALSE]);
        self.string(data, false);
        self.out.extend([TUPLE, BUILD]);
    }
}

/// SplitMix64, a tiny deterministic generator for pixels and labels.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
