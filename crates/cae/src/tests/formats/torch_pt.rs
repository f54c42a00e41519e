//! `.pt` export: read back by cae itself, and checked by Python's standard library (zipfile,
//! pickle, pickletools; no torch) against the layout and pickle that `torch.save` produces.

use crate::tests::fixtures as common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::io::torch_pt::{pt_bytes, save_pt};
use crate::io::weights::{self, HostTensor, StateDict};

/// Python shared by the checks below. `emulated_torch_pickle` drives the stdlib pickler the way
/// `torch.save` does (tensor reduction to `_rebuild_tensor_v2`, storages as persistent ids);
/// `check_emulation_on_reference` shows it reproduces PyTorch's own `data.pkl` byte for byte.
const PRELUDE: &str = r#"
import collections, io, json, math, pickle, pickletools, struct, sys, types, zipfile, zlib

# Stand-ins named like torch's objects, so the stdlib pickler emits torch's GLOBALs.
torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
def _rebuild_tensor_v2(*args): pass
_rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
class FloatStorage: pass
FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
utils_mod._rebuild_tensor_v2, torch_mod.FloatStorage, torch_mod._utils = _rebuild_tensor_v2, FloatStorage, utils_mod
sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod

def contiguous(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc); acc *= d
    return tuple(reversed(strides))

class Storage:
    def __init__(self, numel): self.numel = numel

class Tensor:
    def __init__(self, shape):
        self.shape = tuple(shape)
        self.storage = Storage(math.prod(shape))
    def __reduce_ex__(self, proto):
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, contiguous(self.shape), False, collections.OrderedDict()))

def emulated_torch_pickle(obj):
    keys = {}
    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", FloatStorage, keys.setdefault(id(o), str(len(keys))), "cpu", o.numel)
            return None
    out = io.BytesIO(); P(out, protocol=2).dump(obj); return out.getvalue()

class StandIn(pickle.Unpickler):
    """Loads a torch state-dict pickle into {name: tensor description} without torch."""
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"): return collections.OrderedDict
        if (module, name) == ("torch", "FloatStorage"): return "FloatStorage"
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, requires_grad, hooks: dict(
                key=storage[0], numel=storage[1], offset=offset, shape=size, stride=stride,
                requires_grad=requires_grad, hooks=hooks)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
    def persistent_load(self, pid):
        assert len(pid) == 5 and pid[0] == "storage" and pid[1] == "FloatStorage" and pid[3] == "cpu", pid
        return (pid[2], pid[4])

def archive_of(z):
    return z.namelist()[0].split("/")[0]

def pickle_of(path):
    z = zipfile.ZipFile(path)
    return z.read(archive_of(z) + "/data.pkl")

def globals_of(pkl):
    return {arg for opcode, arg, _ in pickletools.genops(pkl) if opcode.name == "GLOBAL"}

def opcodes_of(pkl):
    return {opcode.name for opcode, _, _ in pickletools.genops(pkl)}

def hash_combine(seed, value):
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & (2**64 - 1))) & (2**64 - 1)

def crc_half_of_serialization_id(z):
    """torch's formula: c10::hash_combine over the CRC-32s of the records before the id."""
    combined = 0
    for info in z.infolist()[:-1]:
        combined = hash_combine(combined, zlib.crc32(z.read(info.filename)))
    return "%020d" % combined

def check_emulation_on_reference(reference_pt):
    reference = pickle_of(reference_pt)
    described = StandIn(io.BytesIO(reference)).load()
    again = emulated_torch_pickle({name: Tensor(t["shape"]) for name, t in described.items()})
    assert again == reference, "the emulated torch pickler does not reproduce PyTorch's data.pkl"
    z = zipfile.ZipFile(reference_pt)
    serialization_id = z.read(archive_of(z) + "/.data/serialization_id").decode()
    assert serialization_id[20:] == crc_half_of_serialization_id(z), serialization_id

def check_pickle_is_torchs(path):
    pkl = pickle_of(path)
    described = StandIn(io.BytesIO(pkl)).load()
    assert type(described) is collections.OrderedDict, type(described)
    again = emulated_torch_pickle(collections.OrderedDict(
        (name, Tensor(t["shape"])) for name, t in described.items()))
    if again != pkl:
        pickletools.dis(pkl, out=sys.stderr)
        raise AssertionError("data.pkl differs from what torch.save's pickler writes (disassembly above)")

def check_structure(path, expected):
    raw = open(path, "rb").read()
    z = zipfile.ZipFile(path)
    assert z.testzip() is None, "a zip entry fails its CRC check"
    archive = archive_of(z)
    names = [name[len(archive) + 1:] for name in z.namelist()]
    assert all(name.startswith(archive + "/") for name in z.namelist()), z.namelist()
    storages = [f"data/{i}" for i in range(len(expected))]
    assert names == ["data.pkl", ".format_version", ".storage_alignment", "byteorder", *storages,
                     "version", ".data/serialization_id"], names
    fixed = {"byteorder": b"little", "version": b"3\n", ".format_version": b"1", ".storage_alignment": b"64"}
    for name, content in fixed.items():
        assert z.read(f"{archive}/{name}") == content, name

    next_header = 0
    for info in z.infolist():
        assert info.compress_type == zipfile.ZIP_STORED, info
        assert info.header_offset == next_header, f"{info.filename}: records are not back to back"
        sig, name_len, extra_len = struct.unpack("<I22xHH", raw[info.header_offset:info.header_offset + 30])
        assert sig == 0x04034B50, info
        extra = raw[info.header_offset + 30 + name_len:info.header_offset + 30 + name_len + extra_len]
        assert extra[:2] == b"FB" and struct.unpack("<H", extra[2:4])[0] == extra_len - 4, extra
        data = info.header_offset + 30 + name_len + extra_len
        assert data % 64 == 0, f"{info.filename}: data at {data}, not 64-byte aligned"
        descriptor = raw[data + info.file_size:data + info.file_size + 16]
        assert descriptor == struct.pack("<IIII", 0x08074B50, info.CRC, info.file_size, info.file_size), info
        next_header = data + info.file_size + 16

    serialization_id = z.read(f"{archive}/.data/serialization_id").decode()
    assert len(serialization_id) == 40 and serialization_id.isdigit(), serialization_id
    assert serialization_id[20:] == crc_half_of_serialization_id(z), serialization_id

    described = StandIn(z.open(f"{archive}/data.pkl")).load()
    assert type(described) is collections.OrderedDict, type(described)
    assert list(described) == [name for name, _ in expected], list(described)
    for i, ((name, shape), t) in enumerate(zip(expected, described.values())):
        numel = math.prod(shape)
        assert t["key"] == str(i) and t["numel"] == numel and t["offset"] == 0, (name, t)
        assert t["shape"] == tuple(shape) and t["stride"] == contiguous(shape), (name, t)
        assert t["requires_grad"] is False and t["hooks"] == collections.OrderedDict(), (name, t)
        assert len(z.read(f"{archive}/data/{i}")) == 4 * numel, name
    print(archive)
"#;

/// Runs `PRELUDE` + `main` with `python3`, the paths as `sys.argv[1:]` and `stdin`; returns stdout.
fn python(main: &str, args: &[&Path], stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{main}\n"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): these tests need Python 3 (standard library only) on PATH")
        });
    // A script that fails before reading stdin closes it; its exit status tells why.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python check failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The names and shapes of `dict`, in order, as JSON for `check_structure`.
fn manifest(dict: &StateDict) -> String {
    let entries: Vec<_> = dict
        .iter()
        .map(|(name, t)| serde_json::json!([name, t.shape]))
        .collect();
    serde_json::to_string(&entries).unwrap()
}

fn reference_init() -> StateDict {
    let path = common::reference_dir().join("seed_latent200_init.safetensors");
    weights::read_weights(&path).unwrap().tensors
}

fn assert_bit_equal(a: &StateDict, b: &StateDict) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, ta) in a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        let bits = |t: &HostTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(ta) == bits(tb), "{name}: values differ");
    }
}

fn tensor(shape: &[usize], seed: f32) -> HostTensor {
    let numel = shape.iter().product::<usize>();
    let data = (0..numel).map(|i| seed + i as f32 * 0.25 - 1.0).collect();
    HostTensor::new(shape.to_vec(), data)
}

/// Edge cases for the pickle: a scalar, empty and 5-D tensors, dimensions that need 2- and
/// 4-byte ints, a non-ASCII name, and enough tensors for long memo indices and a second
/// (single-item) SETITEMS batch.
fn edge_case_dict() -> StateDict {
    let mut dict = StateDict::new();
    dict.insert("scalar".into(), tensor(&[], 3.0));
    dict.insert("empty".into(), tensor(&[0], 0.0));
    dict.insert("empty.2d".into(), tensor(&[4, 0], 0.0));
    dict.insert("wide".into(), tensor(&[1, 70_000], 0.5));
    dict.insert("tall".into(), tensor(&[300, 2], 0.5));
    dict.insert("five.d".into(), tensor(&[2, 1, 3, 1, 2], 1.5));
    dict.insert("grüße.weight".into(), tensor(&[2, 2], -2.0));
    for i in 0..994 {
        dict.insert(format!("many.{i:04}.bias"), tensor(&[1 + i % 3], i as f32));
    }
    assert_eq!(dict.len(), 1001);
    dict
}

#[test]
fn reference_weights_round_trip_bit_exact() {
    let dict = reference_init();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("seed.pt");
    save_pt(&path, &dict).unwrap();
    let back = weights::read_weights(&path).unwrap();
    assert!(back.config.is_none());
    assert_bit_equal(&dict, &back.tensors);
    // The export is what PyTorch's own file holds, too.
    let torch_file = common::reference_dir().join("seed_latent200_init.pt");
    assert_bit_equal(
        &weights::read_weights(&torch_file).unwrap().tensors,
        &back.tensors,
    );
}

#[test]
fn python_reads_the_layout_torch_expects() {
    let dict = reference_init();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.pt");
    save_pt(&path, &dict).unwrap();
    let archive = python(
        "check_structure(sys.argv[1], json.load(sys.stdin))",
        &[&path],
        &manifest(&dict),
    );
    assert_eq!(
        archive.trim(),
        "model",
        "torch names the folder after the file stem"
    );
}

#[test]
fn pickle_is_what_torch_save_writes() {
    let reference = common::reference_dir().join("seed_latent200_init.pt");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("seed.pt");
    save_pt(&path, &reference_init()).unwrap();
    python(
        "check_emulation_on_reference(sys.argv[2])\n\
         check_pickle_is_torchs(sys.argv[1])\n\
         mine, torchs = pickle_of(sys.argv[1]), pickle_of(sys.argv[2])\n\
         assert globals_of(mine) == globals_of(torchs), (globals_of(mine), globals_of(torchs))\n\
         # The reference saved a plain dict (EMPTY_DICT); a state_dict is an OrderedDict.\n\
         assert opcodes_of(mine) == opcodes_of(torchs) - {'EMPTY_DICT'}, opcodes_of(mine) ^ opcodes_of(torchs)",
        &[&path, &reference],
        "",
    );
}

#[test]
fn edge_cases_match_torchs_pickler_and_layout() {
    let dict = edge_case_dict();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("edge.pt");
    std::fs::write(&path, pt_bytes(&dict).unwrap()).unwrap();
    let archive = python(
        "check_pickle_is_torchs(sys.argv[1])\n\
         check_structure(sys.argv[1], json.load(sys.stdin))",
        &[&path],
        &manifest(&dict),
    );
    assert_eq!(archive.trim(), "archive");
    let nonempty: StateDict = dict
        .into_iter()
        .filter(|(_, t)| !t.data.is_empty())
        .collect();
    save_pt(&path, &nonempty).unwrap();
    assert_bit_equal(&nonempty, &weights::read_weights(&path).unwrap().tensors);
}

#[test]
fn tiny_dicts_match_torchs_pickler() {
    let tmp = tempfile::tempdir().unwrap();
    let one: StateDict = [("only.weight".to_string(), tensor(&[3], 1.0))].into();
    for (name, dict) in [("empty.pt", StateDict::new()), ("one.pt", one)] {
        let path = tmp.path().join(name);
        save_pt(&path, &dict).unwrap();
        python(
            "check_pickle_is_torchs(sys.argv[1])\n\
             check_structure(sys.argv[1], json.load(sys.stdin))",
            &[&path],
            &manifest(&dict),
        );
    }
}

#[test]
fn export_is_deterministic() {
    let dict = edge_case_dict();
    assert!(pt_bytes(&dict).unwrap() == pt_bytes(&dict).unwrap());
}

#[test]
fn shape_and_data_must_agree() {
    let mut dict = StateDict::new();
    let bad = HostTensor {
        shape: vec![2, 3],
        data: vec![0.0; 5],
    };
    dict.insert("bad".into(), bad);
    let err = pt_bytes(&dict).unwrap_err().to_string();
    assert!(err.contains("`bad`") && err.contains("[2, 3]"), "{err}");
}
