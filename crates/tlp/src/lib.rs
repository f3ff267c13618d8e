//! PCI Express Transaction Layer Packets, exact to the PCIe Base Specification's bit layout.
//!
//! - [`TlpPacket`]: a zero-copy view with checked field accessors.
//! - [`Tlp`]: a typed, validated representation with [`Tlp::parse`] and [`Tlp::emit`].
//! - [`split`]: MRRS/MPS/4 KiB request splitting and RCB completion splitting.
//! - [`reassembly`]: completions back into the requester's buffer, with checks.
//! - [`tags`]: a requester's outstanding-tag table.
//!
//! Parsing never panics: any byte string either decodes or yields a [`ParseError`].

pub mod buffers;
pub mod byte_enables;
pub mod error;
mod fast;
pub mod packet;
pub mod reassembly;
pub mod repr;
pub mod split;
pub mod tags;
pub mod types;
mod words;

pub use buffers::Buffers;
pub use byte_enables::{check_byte_enables, enabled_bytes, enabled_runs, DwSpan};
pub use error::{EmitError, ParseError};
pub use packet::TlpPacket;
pub use reassembly::{Progress, ReadReassembly, ReassemblyError};
pub use repr::{
    Atomic, Completion, ConfigRequest, Header, HeaderFlags, IoRequest, MemRead, MemWrite, Message,
    Tlp, UrAnswer, MAX_PAYLOAD,
};
pub use split::{
    for_each_read_completion, for_each_write, split_completions, split_read_completions,
    split_requests, CompletionChunk, MaxSize, Rcb, RequestChunk,
};
pub use tags::{TagTable, TagWidth, TagsExhausted, VacantTag};
pub use types::{
    message_code, AtomicOp, Attributes, Bdf, CompletionStatus, Fmt, IntxPin, MessageRouting,
    ProcessingHint, Tag,
};

#[cfg(feature = "strategies")]
pub mod strategies;
