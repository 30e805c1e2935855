pub mod ad;
