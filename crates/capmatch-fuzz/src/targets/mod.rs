//! One file per kind of input.

pub mod checkpoint;
pub mod image;
pub mod index;
pub mod text;
