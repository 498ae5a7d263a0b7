// diffuse patch: the body of conv.cu's im2col with its index type a template parameter, so
// im2col runs its five divisions per element in 32 bits where every index fits. Upstream does
// them in 64 bits (size_t), which made im2col the top kernel of the cifar10 preset's train
// step on an H200 (38% of GPU time in f32, 63% with TF32: 122 us per call over 10,660 calls).
// Kept free of CUDA types so tests/cuda_kernels.rs can run it on its CPU emulator.
#pragma once

// dst: (b_size, h_out, w_out, c_in, h_k, w_k), element dst_i; src: (b_size, c_in, h_in, w_in)
// with strides s0..s3 (any layout).
template <typename T, typename I>
__device__ void im2col_at(const I dst_i, const I h_out, const I w_out, const I h_k,
                          const I w_k, const I stride, const I padding, const I dilation,
                          const I c_in, const I h_in, const I w_in, const I s0, const I s1,
                          const I s2, const I s3, const T *src, T *dst) {
  const I dst_s4 = w_k;
  const I dst_s3 = h_k * dst_s4;
  const I dst_s2 = c_in * dst_s3;
  const I dst_s1 = w_out * dst_s2;
  const I dst_s0 = h_out * dst_s1;
  I tmp = dst_i;
  const I b_idx = tmp / dst_s0;
  tmp -= b_idx * dst_s0;
  const I h_idx = tmp / dst_s1;
  tmp -= h_idx * dst_s1;
  const I w_idx = tmp / dst_s2;
  tmp -= w_idx * dst_s2;
  const I c_idx = tmp / dst_s3;
  tmp -= c_idx * dst_s3;
  const I h_k_idx = tmp / dst_s4;
  const I w_k_idx = tmp - h_k_idx * dst_s4;
  I src_h = h_idx * stride + h_k_idx * dilation;
  I src_w = w_idx * stride + w_k_idx * dilation;
  if (src_h < padding || src_h >= h_in + padding || src_w < padding || src_w >= w_in + padding) {
    dst[dst_i] = static_cast<T>(0);
    return;
  }
  src_h -= padding;
  src_w -= padding;
  dst[dst_i] = src[b_idx * s0 + c_idx * s1 + src_h * s2 + src_w * s3];
}

// Whether im2col's indices all fit in 32 bits: the destination's elements, the padded input
// extent, and the furthest source offset.
__device__ inline bool im2col_fits_u32(const size_t dst_numel, const size_t *dims,
                                       const size_t *s, const size_t padding,
                                       const size_t h_out, const size_t w_out, const size_t h_k,
                                       const size_t w_k, const size_t stride,
                                       const size_t dilation) {
  const size_t lim = 0xffffffffull;
  size_t src_max = 0;
  for (int d = 0; d < 4; d++) src_max += (dims[d] ? dims[d] - 1 : 0) * s[d];
  const size_t reach_h = (h_out ? h_out - 1 : 0) * stride + (h_k ? h_k - 1 : 0) * dilation;
  const size_t reach_w = (w_out ? w_out - 1 : 0) * stride + (w_k ? w_k - 1 : 0) * dilation;
  return dst_numel <= lim && src_max <= lim && dims[2] + padding <= lim &&
         dims[3] + padding <= lim && reach_h <= lim && reach_w <= lim;
}
