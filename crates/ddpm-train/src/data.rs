//! Datasets: IDX import into HDF5, and loading of our HDF5 files.
