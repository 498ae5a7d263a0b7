// Multi-tensor launches (src/kernels/pieces.rs): K parallel lists of f32 tensors cut into
// pieces, up to P per launch, passed by value in the kernel's parameters; block b takes piece b.
#pragma once

template <int K, int P>
struct Pieces {
  unsigned long long ptr[K][P];  // piece b of list k starts at ptr[k][b]
  unsigned len[P];               // its elements
  unsigned count, first;         // pieces in this launch; index of the first among all
};

// List k's elements of this block's piece.
template <int K, int P>
__device__ float *piece(const Pieces<K, P> &t, int k) {
  return reinterpret_cast<float *>(t.ptr[k][blockIdx.x]);
}
