//! Files in and out: atomic, never-clobbering output (`output`), images, grids and GIFs
//! (`imageio`), inpainting masks (`mask`), figures (`plot`), and the Hugging Face hub cache (`hub`).
pub mod hub;
pub mod imageio;
pub mod input;
pub mod mask;
pub mod output;
pub mod plot;
