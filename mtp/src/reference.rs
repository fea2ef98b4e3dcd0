//! Reference (plain Rust, the spec written literally) of the depth-1 MTP module of spec §3.4.
//!
//! The module's forward pass needs a decoder layer, so its reference lives with the CPU backend
//! (`model::cpu::mtp`, checked against Hugging Face transformers' MTP logits); this crate's
//! references are the backend-independent pieces: [`crate::distribution`] and
//! [`crate::acceptance`].
