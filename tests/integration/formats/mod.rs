//! ONNX exports checked by ONNX's checker and ONNX Runtime (the library's own format tests are
//! unit tests in `crates/cae/src/tests/formats`).

mod onnx;
