//! One entry point that loads a model from a folder, file or hub id (H2 fills this in).
