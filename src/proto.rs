//! Generated protocol code (see build.rs).

#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod filer {
    tonic::include_proto!("filer_pb");
}
