//! Untrusted weight files: crafted `.pt` and safetensors files that declare gigantic tensors are
//! refused quickly, before anything of the declared size is allocated. Each is read by the real
//! `cae` binary under a 1 GB address-space limit (`prlimit --as`), so an allocation of the
//! declared size would abort the process instead of passing unnoticed.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{assert_clean_failure, s};
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

const ADDRESS_SPACE_LIMIT: &str = "1000000000";
const QUICKLY: Duration = Duration::from_secs(10);

/// `cae import --from file` under the address-space limit; checks it fails cleanly, quickly,
/// naming the file and every needle.
fn import_refuses(file: &Path, needles: &[&str]) -> String {
    let out = file.with_file_name("imported.safetensors");
    let started = Instant::now();
    let output = Command::new("prlimit")
        .arg(format!("--as={ADDRESS_SPACE_LIMIT}"))
        .arg(env!("CARGO_BIN_EXE_cae"))
        .args(["import", "--from", s(file), "--out", s(&out)])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("prlimit runs cae");
    assert!(started.elapsed() < QUICKLY, "took {:?}", started.elapsed());
    let stderr = assert_clean_failure(&output, &[&[s(file)][..], needles].concat());
    assert!(!out.exists());
    stderr
}

// A `.pt` file as torch.save lays it out, with a hand-written pickle.

fn unicode(text: &str) -> Vec<u8> {
    let mut bytes = vec![b'X'];
    bytes.extend((text.len() as u32).to_le_bytes());
    bytes.extend(text.as_bytes());
    bytes
}

fn int(value: u32) -> Vec<u8> {
    let mut bytes = vec![b'J'];
    bytes.extend(i32::try_from(value).unwrap().to_le_bytes());
    bytes
}

fn tuple(values: &[u32]) -> Vec<u8> {
    let mut bytes = vec![b'('];
    bytes.extend(values.iter().flat_map(|&v| int(v)));
    bytes.push(b't');
    bytes
}

/// The pickle (protocol 2) of `{name: tensor}` where the tensor is
/// `_rebuild_tensor_v2(storage "0" of storage_numel floats, 0, size, stride, False, OrderedDict())`.
fn state_dict_pickle(name: &str, storage_numel: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
    typed_state_dict_pickle(name, "FloatStorage", storage_numel, size, stride)
}

/// [`state_dict_pickle`] with a storage of class `torch.<storage_class>`.
fn typed_state_dict_pickle(
    name: &str,
    storage_class: &str,
    storage_numel: u32,
    size: &[u32],
    stride: &[u32],
) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend(unicode(name));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(unicode("storage"));
    p.extend(format!("ctorch\n{storage_class}\n").as_bytes());
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(int(storage_numel));
    p.extend(b"tQ");
    p.extend(int(0));
    p.extend(tuple(size));
    p.extend(tuple(stride));
    p.push(0x89);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend(b"tRs.");
    p
}

/// A `.pt` zip holding `pickle` and the storage `data/0`, every record stored with `method`.
fn pt_file(path: &Path, pickle: &[u8], storage: &[u8], method: CompressionMethod) {
    let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let options = SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", storage),
        ("archive/version", b"3\n".as_slice()),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn the_hand_written_pt_file_is_read_when_its_claims_are_honest() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("honest.pt");
    let pickle = state_dict_pickle("w", 2, &[2, 1], &[1, 1]);
    let storage = [1.5f32, -2.0].map(f32::to_le_bytes).concat();
    pt_file(&path, &pickle, &storage, CompressionMethod::Stored);
    let file = cae::io::weights::read_weights(&path).unwrap();
    assert_eq!(file.tensors["w"].shape, [2, 1]);
    assert_eq!(file.tensors["w"].data, [1.5, -2.0]);
}

/// float16, bfloat16 and float64 tensors are read as float32 from `.pt` and safetensors alike;
/// a float64 beyond float32's range and a non-float dtype are refused, naming the tensor.
#[test]
fn other_float_precisions_are_read_as_float32_and_others_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.0, 0.25, 3.0];
    type Encode = fn(f32) -> Vec<u8>;
    let f16: Encode = |v| half::f16::from_f32(v).to_le_bytes().to_vec();
    let bf16: Encode = |v| half::bf16::from_f32(v).to_le_bytes().to_vec();
    let f64: Encode = |v| f64::from(v).to_le_bytes().to_vec();
    let cases = [
        ("HalfStorage", "F16", "float16", f16),
        ("BFloat16Storage", "BF16", "bfloat16", bf16),
        ("DoubleStorage", "F64", "float64", f64),
    ];
    for (storage_class, dtype, name, encode) in cases {
        let data: Vec<u8> = values.iter().flat_map(|&v| encode(v)).collect();
        let pt = tmp.path().join(format!("{name}.pt"));
        let pickle = typed_state_dict_pickle("w", storage_class, 4, &[4], &[1]);
        pt_file(&pt, &pickle, &data, CompressionMethod::Stored);
        let st = tmp.path().join(format!("{name}.safetensors"));
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype}","shape":[4],"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        safetensors_file(&st, header.len() as u64, &header, &data);
        for path in [&pt, &st] {
            let file = cae::io::weights::read_weights(path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert_eq!(file.tensors["w"].data, values, "{}", path.display());
            assert_eq!(file.converted_from, Some(name), "{}", path.display());
        }
    }

    let huge = [1e300f64, 1.0].map(f64::to_le_bytes).concat();
    let pt = tmp.path().join("huge.pt");
    pt_file(
        &pt,
        &typed_state_dict_pickle("w", "DoubleStorage", 2, &[2], &[1]),
        &huge,
        CompressionMethod::Stored,
    );
    import_refuses(
        &pt,
        &["tensor `w` holds the float64 value 1e300, which float32 cannot hold"],
    );

    let longs = [7i64, 8].map(i64::to_le_bytes).concat();
    let pt = tmp.path().join("long.pt");
    pt_file(
        &pt,
        &typed_state_dict_pickle("w", "LongStorage", 2, &[2], &[1]),
        &longs,
        CompressionMethod::Stored,
    );
    import_refuses(
        &pt,
        &[
            "tensor `w` has dtype I64",
            "float16, bfloat16 and float64 are converted",
        ],
    );
}

#[test]
fn a_pt_view_expanding_one_value_to_gigabytes_is_refused_before_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("expand.pt");
    // 50000 x 50000 float32 views of one stored value: 10^10 bytes, under pytorch-reader's
    // 10 GiB ceiling, from a file of a few hundred bytes.
    let pickle = state_dict_pickle("encoder.net.0.weight", 1, &[50_000, 50_000], &[0, 0]);
    pt_file(
        &path,
        &pickle,
        &1.0f32.to_le_bytes(),
        CompressionMethod::Stored,
    );
    import_refuses(
        &path,
        &[
            "encoder.net.0.weight",
            "[50000, 50000]",
            "10000000000 bytes",
            "more than the whole file",
        ],
    );
}

#[test]
fn a_pt_storage_claiming_gigabytes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("storage.pt");
    let big = 2_000_000_000;
    let pickle = state_dict_pickle("encoder.net.0.bias", big, &[big], &[1]);
    pt_file(&path, &pickle, &[0u8; 64], CompressionMethod::Stored);
    import_refuses(&path, &["encoder.net.0.bias", "more than the whole file"]);
}

#[test]
fn a_pt_with_compressed_records_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("deflated.pt");
    let pickle = state_dict_pickle("w", 2, &[2], &[1]);
    pt_file(&path, &pickle, &[0u8; 8], CompressionMethod::Deflated);
    import_refuses(&path, &["record `archive/data.pkl` is compressed"]);
}

// safetensors: an 8-byte little-endian header length, the JSON header, then the data.

fn safetensors_file(path: &Path, header_len: u64, header: &str, data: &[u8]) {
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    fs::write(path, bytes).unwrap();
}

#[test]
fn safetensors_claiming_huge_shapes_or_headers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.safetensors");
    let cases = [
        r#"{"w":{"dtype":"F32","shape":[50000,50000],"data_offsets":[0,4]}}"#,
        r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#,
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,10000000000]}}"#,
    ];
    for header in cases {
        safetensors_file(&path, header.len() as u64, header, &[0u8; 4]);
        import_refuses(&path, &["not a valid safetensors file"]);
    }
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    safetensors_file(&path, 1 << 62, header, &[0u8; 4]);
    import_refuses(&path, &["not a valid safetensors file"]);
}
