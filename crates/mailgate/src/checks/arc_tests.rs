//! Sealing: our own validation and dkimpy's must both accept our seals.
