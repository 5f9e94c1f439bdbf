//! Ladder's companion app: serves real traffic on whatever tier its phase provides.
