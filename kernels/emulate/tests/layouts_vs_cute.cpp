// Independent check of the interpreter's Hopper layouts against CuTe (issue 14): the wgmma
// accumulator fragment, the matrix-descriptor decoding and operand addressing, the TMA / wgmma
// swizzle and the mma.sync m16n8k16 fragments are written in dsv3/emu/*.h from the PTX ISA's
// tables; here they are compared, exhaustively for the shapes the kernels use, with the layouts of
// the pinned nvidia-cutlass wheel's CuTe headers compiled on the host. Then functional tests run
// the emulated wgmma, mma.sync, TMA and mbarrier on operands laid out by CuTe, against plain loops.
// The kernels' own helpers in hopper.cuh are checked against CuTe as well (a mismatch there is a
// kernel bug), but the interpreter is never checked only against them.
//
// Build (kernels/tests/emulate_layouts.rs does this): g++ -std=c++17 -DDSV3_EMULATE
//   -I kernels/include -I .cuda/include -I <cutlass>/include layouts_vs_cute.cpp fake_runtime.cpp
// Prints one line per group of checks and exits non-zero if any check failed.

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

// CuTe turns smem pointers into shared-window addresses with __cvta_generic_to_shared; on the
// host that is "offset from the arena", the same convention as the fake runtime's shared_addr.
static uint8_t* g_arena = nullptr;
#define CUTE_CVTA_GENERIC_TO_SHARED_ACTIVATED 1
inline uint32_t __cvta_generic_to_shared(const void* p) {
  return static_cast<uint32_t>(static_cast<const uint8_t*>(p) - g_arena);
}

#include <cute/atom/mma_traits_sm80.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/swizzle.hpp>
#include <cute/tensor.hpp>

// hopper.cuh outside nvcc and outside the interpreter build's forced include: just what its
// helpers need.
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#include "dsv3/emu/hopper_emu.h"
#include "dsv3/hopper.cuh"
#include "fake_runtime.h"

using namespace cute;
namespace emu = dsv3::emu;
namespace gmma = cute::SM90::GMMA;

// ---- reporting -------------------------------------------------------------------------------
static int g_failed_groups = 0;

struct Group {
  std::string name;
  long checks = 0, failures = 0;
  explicit Group(std::string n) : name(std::move(n)) {}
  // Records one comparison; the first few mismatches of a group are printed in full.
  void expect(bool ok, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    ++checks;
    if (ok) return;
    if (++failures <= 8) {
      va_list ap;
      va_start(ap, fmt);
      printf("  MISMATCH [%s] ", name.c_str());
      vprintf(fmt, ap);
      printf("\n");
      va_end(ap);
    }
  }
  ~Group() {
    printf("%-4s %-78s %ld checks", failures ? "FAIL" : "ok", name.c_str(), checks);
    if (failures) printf(", %ld mismatches", failures);
    printf("\n");
    if (failures || checks == 0) ++g_failed_groups;
  }
};

// Runs f, which must fail (fake::Failure) with a message containing `needle`.
static void expect_failure(Group& g, const char* what, const char* needle,
                           const std::function<void()>& f) {
  try {
    f();
    g.expect(false, "%s: no failure reported", what);
  } catch (const fake::Failure& e) {
    g.expect(strstr(e.what(), needle) != nullptr, "%s: message \"%s\" lacks \"%s\"", what, e.what(),
             needle);
  }
}

// ---- the shared-memory arena (the fake block's dynamic shared memory) ------------------------
constexpr uint32_t kArenaBytes = 1u << 18;
alignas(4096) static uint8_t g_smem[kArenaBytes];
alignas(64) static uint8_t g_static_smem[256];  // stands for static __shared__ variables
constexpr uint32_t kTileA = 4096;               // 1024-aligned operand tile offsets
constexpr uint32_t kTileB = 4096 + 65536;

static void reset_arena() {
  memset(g_smem, 0, sizeof g_smem);
  g_arena = g_smem;
  fake::set_smem(g_smem, kArenaBytes);
  fake::set_static_smem(g_static_smem, sizeof g_static_smem);
  fake::reset_block();
  fake::set_thread(0);
}

template <class Ptr>
static uint32_t smem_off(Ptr p) {
  return static_cast<uint32_t>(reinterpret_cast<const uint8_t*>(p) - g_smem);
}

// GMMA smem layout atoms by swizzle width in bytes (0 = INTERLEAVE, no swizzle).
template <class T, int Sw>
struct KAtom;
template <class T>
struct KAtom<T, 0> {
  using type = gmma::Layout_K_INTER_Atom<T>;
};
template <class T>
struct KAtom<T, 32> {
  using type = gmma::Layout_K_SW32_Atom<T>;
};
template <class T>
struct KAtom<T, 64> {
  using type = gmma::Layout_K_SW64_Atom<T>;
};
template <class T>
struct KAtom<T, 128> {
  using type = gmma::Layout_K_SW128_Atom<T>;
};
template <class T, int Sw>
struct MNAtom;
template <class T>
struct MNAtom<T, 0> {
  using type = gmma::Layout_MN_INTER_Atom<T>;
};
template <class T>
struct MNAtom<T, 32> {
  using type = gmma::Layout_MN_SW32_Atom<T>;
};
template <class T>
struct MNAtom<T, 64> {
  using type = gmma::Layout_MN_SW64_Atom<T>;
};
template <class T>
struct MNAtom<T, 128> {
  using type = gmma::Layout_MN_SW128_Atom<T>;
};

template <class T>
constexpr const char* type_name() {
  return sizeof(T) == 2 ? "bf16" : "e4m3";
}
template <class T>
constexpr emu::GmmaType gmma_type() {
  return sizeof(T) == 2 ? emu::GmmaType::kBf16 : emu::GmmaType::kE4m3;
}

// An operand tile of MN x KT elements in the arena at `offset`, laid out by CuTe from the atom.
// KFirst = true orders the atoms K-fastest (the kernels' MN-major layout: 64-wide MN blocks, each
// holding every K row), otherwise CuTe's default MN-fastest order.
template <class T, class Atom, int MN, int KT, bool KFirst = false>
static auto cute_tile(uint32_t offset) {
  auto ptr = make_smem_ptr(reinterpret_cast<T*>(g_smem + offset));
  if constexpr (KFirst) {
    return make_tensor(ptr, tile_to_shape(Atom{}, Shape<Int<MN>, Int<KT>>{}, Step<_2, _1>{}));
  } else {
    return make_tensor(ptr, tile_to_shape(Atom{}, Shape<Int<MN>, Int<KT>>{}));
  }
}

// ---- (a) accumulator fragment vs CLayout_64xN --------------------------------------------------
template <int N>
static void check_acc_layout(Group& emu_g, Group& helper_g) {
  using CL = gmma::CLayout_64xN<N>;
  for (int t = 0; t < 128; ++t) {
    for (int i = 0; i < N / 2; ++i) {
      const int idx = CL{}(t, i);  // column-major 64 x N
      const int m = idx % 64, n = idx / 64;
      const emu::AccCoord c = emu::wgmma_acc_coord(t, i);
      emu_g.expect(int(c.row) == m && int(c.col) == n, "N=%d t=%d i=%d: emu (%u,%u) cute (%d,%d)",
                   N, t, i, c.row, c.col, m, n);
      helper_g.expect(dsv3::wgmma_acc_row(t, i) == m && dsv3::wgmma_acc_col(t, i) == n,
                      "N=%d t=%d i=%d: hopper.cuh (%d,%d) cute (%d,%d)", N, t, i,
                      dsv3::wgmma_acc_row(t, i), dsv3::wgmma_acc_col(t, i), m, n);
    }
  }
}

template <int... Ns>
static void check_acc_layouts(std::integer_sequence<int, Ns...>) {
  Group e("(a) wgmma accumulator fragment == CuTe CLayout_64xN, N = 8..256 step 8");
  Group h("(a') hopper.cuh wgmma_acc_row/col == CuTe CLayout_64xN");
  (check_acc_layout<(Ns + 1) * 8>(e, h), ...);
}

// ---- (b) descriptor decode + operand addressing vs CuTe's GMMA atoms and make_gmma_desc
// ---------- K-major: A (MN = 64) and B (MN = N); tile K = 128 bytes of K, walked in instruction-K
// steps.
template <class T, int Sw, int MN>
static void check_k_major(Group& g) {
  constexpr int eb = sizeof(T), kinst = 32 / eb, KT = 128 / eb;
  auto tile = cute_tile<T, typename KAtom<T, Sw>::type, MN, KT>(kTileA);
  for (int kb = 0; kb < KT / kinst; ++kb) {
    auto sub = local_tile(tile, Shape<Int<MN>, Int<kinst>>{}, make_coord(0, kb));
    const uint64_t desc = gmma::make_gmma_desc<gmma::Major::K>(sub).desc_;
    const emu::GmmaDesc d = emu::decode_gmma_desc(desc);
    g.expect(d.swizzle_bytes == uint32_t(Sw) && d.base_offset == 0,
             "%s sw%d MN=%d: decoded swizzle %u base %u", type_name<T>(), Sw, MN, d.swizzle_bytes,
             d.base_offset);
    for (int mn = 0; mn < MN; ++mn) {
      for (int k = 0; k < kinst; ++k) {
        const uint32_t want = smem_off(raw_pointer_cast(&sub(mn, k)));
        const uint32_t got = emu::gmma_k_major_addr(d, eb, mn, k);
        g.expect(got == want, "%s K-major sw%d MN=%d kb=%d (%d,%d): emu 0x%x cute 0x%x",
                 type_name<T>(), Sw, MN, kb, mn, k, got, want);
      }
    }
  }
}

template <class T, int Sw, bool KFirst, int MN>
static void check_mn_major(Group& g) {
  constexpr int eb = sizeof(T), kinst = 32 / eb, KT = 64;
  auto tile = cute_tile<T, typename MNAtom<T, Sw>::type, MN, KT, KFirst>(kTileB);
  for (int kb = 0; kb < KT / kinst; ++kb) {
    auto sub = local_tile(tile, Shape<Int<MN>, Int<kinst>>{}, make_coord(0, kb));
    const uint64_t desc = gmma::make_gmma_desc<gmma::Major::MN>(sub).desc_;
    const emu::GmmaDesc d = emu::decode_gmma_desc(desc);
    for (int mn = 0; mn < MN; ++mn) {
      for (int k = 0; k < kinst; ++k) {
        const uint32_t want = smem_off(raw_pointer_cast(&sub(mn, k)));
        const uint32_t got = emu::gmma_mn_major_addr(d, eb, mn, k);
        g.expect(got == want, "%s MN-major sw%d%s MN=%d kb=%d (%d,%d): emu 0x%x cute 0x%x",
                 type_name<T>(), Sw, KFirst ? " k-first" : "", MN, kb, mn, k, got, want);
      }
    }
  }
}

template <class T, int Sw>
static void check_k_major_all(Group& g) {
  check_k_major<T, Sw, 64>(g);  // A
  check_k_major<T, Sw, 8>(g);
  check_k_major<T, Sw, 16>(g);
  check_k_major<T, Sw, 24>(g);
  check_k_major<T, Sw, 32>(g);
  check_k_major<T, Sw, 128>(g);
  check_k_major<T, Sw, 192>(g);
  check_k_major<T, Sw, 256>(g);
}

template <int Sw, bool KFirst>
static void check_mn_major_all(Group& g) {
  using T = cute::bfloat16_t;
  constexpr int atom_mn = Sw == 0 ? 8 : Sw / 2;  // one swizzle row of 16-bit elements
  if constexpr (atom_mn <= 16) check_mn_major<T, Sw, KFirst, 16>(g);
  if constexpr (atom_mn <= 32) check_mn_major<T, Sw, KFirst, 32>(g);
  check_mn_major<T, Sw, KFirst, 64>(g);
  check_mn_major<T, Sw, KFirst, 128>(g);
  check_mn_major<T, Sw, KFirst, 192>(g);
  check_mn_major<T, Sw, KFirst, 256>(g);
}

static void check_descriptors() {
  reset_arena();
  {
    Group g("(b) K-major operand address (emu descriptor decode) == CuTe atom + make_gmma_desc");
    check_k_major_all<cute::bfloat16_t, 128>(g);
    check_k_major_all<cute::bfloat16_t, 64>(g);
    check_k_major_all<cute::bfloat16_t, 32>(g);
    check_k_major_all<cute::bfloat16_t, 0>(g);
    check_k_major_all<cute::float_e4m3_t, 128>(g);
    check_k_major_all<cute::float_e4m3_t, 64>(g);
    check_k_major_all<cute::float_e4m3_t, 32>(g);
    check_k_major_all<cute::float_e4m3_t, 0>(g);
  }
  {
    Group g(
        "(b) MN-major bf16 operand address (emu descriptor decode) == CuTe atom + make_gmma_desc");
    check_mn_major_all<128, false>(g);
    check_mn_major_all<128, true>(g);
    check_mn_major_all<64, false>(g);
    check_mn_major_all<64, true>(g);
    check_mn_major_all<32, false>(g);
    check_mn_major_all<32, true>(g);
    check_mn_major_all<0, false>(g);
    check_mn_major_all<0, true>(g);
  }
  {
    // The kernels build descriptors with hopper.cuh's helpers: same bits as CuTe's for the
    // layouts they describe.
    Group g("(b') hopper.cuh make_smem_desc_k_sw128 / _mn_sw128 == CuTe make_gmma_desc");
    auto a16 = cute_tile<cute::bfloat16_t, KAtom<cute::bfloat16_t, 128>::type, 64, 64>(kTileA);
    auto a8 = cute_tile<cute::float_e4m3_t, KAtom<cute::float_e4m3_t, 128>::type, 64, 128>(kTileA);
    for (int kb = 0; kb < 4; ++kb) {
      auto s16 = local_tile(a16, Shape<_64, _16>{}, make_coord(0, kb));
      auto s8 = local_tile(a8, Shape<_64, _32>{}, make_coord(0, kb));
      const uint64_t c16 = gmma::make_gmma_desc<gmma::Major::K>(s16).desc_;
      const uint64_t c8 = gmma::make_gmma_desc<gmma::Major::K>(s8).desc_;
      const uint64_t h16 = dsv3::make_smem_desc_k_sw128(kTileA + kb * 32);
      g.expect(h16 == c16, "K sw128 bf16 kb=%d: hopper.cuh 0x%016llx cute 0x%016llx", kb,
               (unsigned long long)h16, (unsigned long long)c16);
      g.expect(h16 == c8, "K sw128 e4m3 kb=%d: hopper.cuh 0x%016llx cute 0x%016llx", kb,
               (unsigned long long)h16, (unsigned long long)c8);
    }
    auto b =
        cute_tile<cute::bfloat16_t, MNAtom<cute::bfloat16_t, 128>::type, 128, 64, true>(kTileB);
    for (int kb = 0; kb < 4; ++kb) {
      auto s = local_tile(b, Shape<_128, _16>{}, make_coord(0, kb));
      const uint64_t c = gmma::make_gmma_desc<gmma::Major::MN>(s).desc_;
      // 64-wide MN blocks of 64 K rows x 128 bytes: 8 KiB apart; k16 = 2048 bytes.
      const uint64_t h = dsv3::make_smem_desc_mn_sw128(kTileB + kb * 2048, 64 * 128);
      g.expect(h == c, "MN sw128 bf16 kb=%d: hopper.cuh 0x%016llx cute 0x%016llx", kb,
               (unsigned long long)h, (unsigned long long)c);
    }
  }
}

// ---- (c) swizzle functors
// ------------------------------------------------------------------------
static void check_swizzles() {
  Group g("(c) emu swizzle_addr(a, 32/64/128) == CuTe Swizzle<1|2|3,4,3> on byte addresses");
  Group h("(c') hopper.cuh swizzle_128b / swizzle_128b_offset == CuTe Swizzle<3,4,3>");
  for (uint32_t a = 0; a < (1u << 18); ++a) {
    g.expect(emu::swizzle_addr(a, 128) == uint32_t(Swizzle<3, 4, 3>{}(a)), "128B a=0x%x", a);
    g.expect(emu::swizzle_addr(a, 64) == uint32_t(Swizzle<2, 4, 3>{}(a)), "64B a=0x%x", a);
    g.expect(emu::swizzle_addr(a, 32) == uint32_t(Swizzle<1, 4, 3>{}(a)), "32B a=0x%x", a);
    g.expect(emu::swizzle_addr(a, 0) == a, "none a=0x%x", a);
    h.expect(dsv3::swizzle_128b_offset(a) == uint32_t(Swizzle<3, 4, 3>{}(a)), "offset a=0x%x", a);
  }
  for (uint32_t r = 0; r < 256; ++r) {
    for (uint32_t b = 0; b < 128; ++b) {
      h.expect(dsv3::swizzle_128b(r, b) == uint32_t(Swizzle<3, 4, 3>{}(r * 128 + b)),
               "row %u byte %u", r, b);
    }
  }
}

// ---- element conversions vs cutlass' own types
// ------------------------------------------------------
static void check_conversions() {
  Group g("emu e4m3 / bf16 decoding == cutlass::float_e4m3_t / bfloat16_t");
  for (int v = 0; v < 256; ++v) {
    const float want = float(cutlass::float_e4m3_t::bitcast(uint8_t(v)));
    const float got = emu::e4m3_bits_to_float(uint8_t(v));
    g.expect((std::isnan(want) && std::isnan(got)) || want == got, "e4m3 0x%02x: emu %g cutlass %g",
             v, got, want);
  }
  for (int v = 0; v < 65536; v += 7) {
    const float want = float(cutlass::bfloat16_t::bitcast(uint16_t(v)));
    const float got = emu::bf16_bits_to_float(uint16_t(v));
    g.expect((std::isnan(want) && std::isnan(got)) || want == got, "bf16 0x%04x: emu %g cutlass %g",
             v, got, want);
  }
}

// ---- (d) functional wgmma
// -------------------------------------------------------------------------- A (64 x KT) and B (N x
// KT) get small integers (exact in bf16 / e4m3 and in f32 sums), written through CuTe's tensors;
// each of the 128 threads runs the emulated wgmma chain over the K steps and its fragment is
// compared, through CuTe's CLayout_64xN, with a plain loop.
template <class T, int Sw, int N, bool TransB, bool KFirst = false>
static void check_wgmma(Group& g, std::mt19937& rng) {
  reset_arena();
  constexpr int eb = sizeof(T), kinst = 32 / eb;
  constexpr int KT = TransB ? 64 : 128 / eb;
  auto sa = cute_tile<T, typename KAtom<T, Sw>::type, 64, KT>(kTileA);
  auto sb = [] {
    if constexpr (TransB) {
      return cute_tile<T, typename MNAtom<T, Sw>::type, N, KT, KFirst>(kTileB);
    } else {
      return cute_tile<T, typename KAtom<T, Sw>::type, N, KT>(kTileB);
    }
  }();
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> a(64 * KT), b(N * KT);
  for (int m = 0; m < 64; ++m)
    for (int k = 0; k < KT; ++k) sa(m, k) = T(a[m * KT + k] = float(dist(rng)));
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < KT; ++k) sb(n, k) = T(b[n * KT + k] = float(dist(rng)));
  std::vector<uint64_t> da, db;
  for (int kb = 0; kb < KT / kinst; ++kb) {
    da.push_back(gmma::make_gmma_desc<gmma::Major::K>(
                     local_tile(sa, Shape<_64, Int<kinst>>{}, make_coord(0, kb)))
                     .desc_);
    constexpr auto major = TransB ? gmma::Major::MN : gmma::Major::K;
    db.push_back(
        gmma::make_gmma_desc<major>(local_tile(sb, Shape<Int<N>, Int<kinst>>{}, make_coord(0, kb)))
            .desc_);
  }
  using CL = gmma::CLayout_64xN<N>;
  for (int t = 0; t < 128; ++t) {
    fake::set_thread(t);
    float d[N / 2];
    for (float& x : d) x = 12345.0f;  // must be ignored: the first step has scale-d = 0
    for (size_t kb = 0; kb < da.size(); ++kb) {
      emu::wgmma_issue(d, N, gmma_type<T>(), TransB, da[kb], db[kb], kb > 0);
    }
    emu::wgmma_commit_group();
    g.expect(d[0] == 12345.0f, "%s N=%d t=%d: accumulator changed before wgmma.wait_group",
             type_name<T>(), N, t);
    emu::wgmma_wait_group(0);
    for (int i = 0; i < N / 2; ++i) {
      const int idx = CL{}(t, i), m = idx % 64, n = idx / 64;
      float want = 0;
      for (int k = 0; k < KT; ++k) want += a[m * KT + k] * b[n * KT + k];
      g.expect(d[i] == want, "%s sw%d N=%d%s t=%d i=%d (m=%d n=%d): emu %g want %g", type_name<T>(),
               Sw, N, TransB ? " transB" : "", t, i, m, n, d[i], want);
    }
  }
}

static void check_wgmma_all() {
  std::mt19937 rng(14);
  Group g(
      "(d) emulated wgmma (bf16/e4m3, K-/MN-major, all swizzles) on CuTe-laid operands == plain "
      "loop");
  using bf = cute::bfloat16_t;
  using e8 = cute::float_e4m3_t;
  check_wgmma<bf, 128, 16, false>(g, rng);
  check_wgmma<bf, 128, 64, false>(g, rng);
  check_wgmma<bf, 128, 256, false>(g, rng);
  check_wgmma<bf, 64, 32, false>(g, rng);
  check_wgmma<bf, 32, 24, false>(g, rng);
  check_wgmma<bf, 0, 128, false>(g, rng);
  check_wgmma<bf, 128, 64, true>(g, rng);
  check_wgmma<bf, 128, 128, true, true>(g, rng);
  check_wgmma<bf, 64, 32, true>(g, rng);
  check_wgmma<bf, 0, 16, true>(g, rng);
  check_wgmma<e8, 128, 32, false>(g, rng);
  check_wgmma<e8, 128, 128, false>(g, rng);
  check_wgmma<e8, 32, 64, false>(g, rng);
  check_wgmma<e8, 0, 16, false>(g, rng);
}

// ---- (e) mma.sync m16n8k16 fragments vs CuTe's SM80 traits, and functionally
// ---------------------
static void check_mma_sync() {
  using Tr = MMA_Traits<SM80_16x8x16_F32BF16BF16F32_TN>;
  Group g(
      "(e) mma.sync m16n8k16 A/B/C fragments == CuTe MMA_Traits<SM80_16x8x16_F32BF16BF16F32_TN>");
  for (int l = 0; l < 32; ++l) {
    for (int v = 0; v < 8; ++v) {
      const int idx = typename Tr::ALayout{}(l, v);  // (M16, K16), column-major
      const emu::MmaCoord c = emu::mma16816_a_coord(l, v);
      g.expect(int(c.row) == idx % 16 && int(c.col) == idx / 16, "A lane %d v %d", l, v);
    }
    for (int v = 0; v < 4; ++v) {
      const int ib = typename Tr::BLayout{}(l, v);  // (N8, K16)
      const emu::MmaCoord b = emu::mma16816_b_coord(l, v);
      g.expect(int(b.col) == ib % 8 && int(b.row) == ib / 8, "B lane %d v %d", l, v);
      const int ic = typename Tr::CLayout{}(l, v);  // (M16, N8)
      const emu::MmaCoord c = emu::mma16816_c_coord(l, v);
      g.expect(int(c.row) == ic % 16 && int(c.col) == ic / 16, "C lane %d v %d", l, v);
    }
  }
  Group f("(e) emulated mma.sync m16n8k16 bf16 == plain loop");
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-4, 4);
  float am[16][16], bm[16][8];  // A[m][k], B[k][n]
  for (auto& r : am)
    for (float& x : r) x = float(dist(rng));
  for (auto& r : bm)
    for (float& x : r) x = float(dist(rng));
  // Fragments packed per CuTe's layouts (value v: low half of register v / 2 when v is even).
  uint32_t aw[32][4] = {}, bw[32][2] = {};
  const auto bits = [](float x) { return uint32_t(cutlass::bfloat16_t(x).raw()); };
  for (int l = 0; l < 32; ++l) {
    for (int v = 0; v < 8; ++v) {
      const int idx = typename Tr::ALayout{}(l, v);
      aw[l][v / 2] |= bits(am[idx % 16][idx / 16]) << (16 * (v % 2));
    }
    for (int v = 0; v < 4; ++v) {
      const int idx = typename Tr::BLayout{}(l, v);
      bw[l][v / 2] |= bits(bm[idx / 8][idx % 8]) << (16 * (v % 2));
    }
  }
  for (int l = 0; l < 32; ++l) {
    float c[4] = {1, 2, 3, 4};
    emu::mma16816_lane(l, aw, bw, c);
    for (int v = 0; v < 4; ++v) {
      const int idx = typename Tr::CLayout{}(l, v), m = idx % 16, n = idx / 16;
      float want = float(v + 1);
      for (int k = 0; k < 16; ++k) want += am[m][k] * bm[k][n];
      f.expect(c[v] == want, "lane %d c%d (m=%d n=%d): emu %g want %g", l, v, m, n, c[v], want);
    }
  }
}

// ---- (f) TMA: layout == CuTe's GMMA atoms, OOB zero fill, tx count, store skips OOB
// ---------------
static emu::EmuTensorMap make_map(const void* base, uint32_t eb, uint32_t sw,
                                  std::initializer_list<uint64_t> dims,
                                  std::initializer_list<uint32_t> box) {
  emu::EmuTensorMap m{};
  m.magic = emu::kTensorMapMagic;
  m.rank = uint32_t(dims.size());
  m.elem_bytes = eb;
  m.swizzle_bytes = sw;
  m.global_address = reinterpret_cast<uint64_t>(base);
  int d = 0;
  uint64_t stride = eb;
  for (uint64_t x : dims) {
    m.dims[d] = x;
    m.strides_bytes[d] = stride;
    stride *= x;
    ++d;
  }
  d = 0;
  for (uint32_t x : box) m.box[d++] = x;
  return m;
}

// Loads the ROWS x COLS bf16 box at (c0, c1) of a rows x cols matrix through the emulated TMA and
// checks every element through CuTe's K-major GMMA atom of the same swizzle.
template <int Sw, int ROWS, int COLS>
static void check_tma_2d(Group& g, const std::vector<uint16_t>& src, int rows, int cols, int c0,
                         int c1) {
  reset_arena();
  const emu::EmuTensorMap map =
      make_map(src.data(), 2, Sw, {uint64_t(cols), uint64_t(rows)}, {COLS, ROWS});
  uint64_t* bar = reinterpret_cast<uint64_t*>(g_static_smem);
  emu::mbar_init(bar, 1);
  emu::mbar_arrive_expect_tx(bar, ROWS * COLS * 2);
  emu::tma_load(g_smem + kTileA, &map, bar, 2, std::array<int32_t, 2>{c0, c1}.data());
  bool untouched = true;
  for (int i = 0; i < ROWS * COLS * 2; ++i) untouched &= g_smem[kTileA + i] == 0;
  g.expect(untouched, "sw%d: shared memory written before the mbarrier wait", Sw);
  g.expect(emu::mbar_try_wait(bar, 0), "sw%d: phase 0 not complete after the box landed", Sw);
  auto tile = [] {
    if constexpr (Sw == 0) {
      return make_tensor(make_smem_ptr(reinterpret_cast<cute::bfloat16_t*>(g_smem + kTileA)),
                         make_layout(Shape<Int<ROWS>, Int<COLS>>{}, LayoutRight{}));
    } else {
      return cute_tile<cute::bfloat16_t, typename KAtom<cute::bfloat16_t, Sw>::type, ROWS, COLS>(
          kTileA);
    }
  }();
  for (int r = 0; r < ROWS; ++r) {
    for (int c = 0; c < COLS; ++c) {
      const int gr = c1 + r, gc = c0 + c;
      const bool in = gr >= 0 && gr < rows && gc >= 0 && gc < cols;
      const uint16_t want = in ? src[size_t(gr) * cols + gc] : 0;
      const uint16_t got = tile(r, c).raw();
      g.expect(got == want, "sw%d box at (%d,%d) elem (%d,%d): smem 0x%04x want 0x%04x", Sw, c0, c1,
               r, c, got, want);
    }
  }
  emu::mbar_inval(bar);
}

static void check_tma() {
  const int rows = 70, cols = 104;  // 208-byte rows: a 16-byte multiple, as TMA requires
  std::vector<uint16_t> src(size_t(rows) * cols);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint16_t(0x3f80 + i % 4093 + 1);
  {
    Group g("(f) emulated TMA 2D load == CuTe K-major GMMA atom layout, OOB zero-filled");
    for (auto [c0, c1] : {std::pair{0, 0}, {64, 64}, {-8, -3}, {40, 6}, {100, 69}}) {
      check_tma_2d<128, 64, 64>(g, src, rows, cols, c0, c1);
      check_tma_2d<64, 16, 32>(g, src, rows, cols, c0, c1);
      check_tma_2d<32, 8, 16>(g, src, rows, cols, c0, c1);
      check_tma_2d<0, 5, 24>(g, src, rows, cols, c0, c1);
    }
  }
  {
    Group g("(f) emulated TMA 3D load, OOB in every dimension zero-filled");
    reset_arena();
    const int d0 = 40, d1 = 6, d2 = 3;
    std::vector<uint16_t> s3(size_t(d0) * d1 * d2);
    for (size_t i = 0; i < s3.size(); ++i) s3[i] = uint16_t(i + 1);
    const emu::EmuTensorMap map =
        make_map(s3.data(), 2, 0, {uint64_t(d0), uint64_t(d1), uint64_t(d2)}, {16, 4, 2});
    uint64_t* bar = reinterpret_cast<uint64_t*>(g_smem + 64);
    for (auto c : {std::array<int32_t, 3>{32, 4, 2}, {-8, -1, -1}, {0, 0, 0}}) {
      memset(g_smem + kTileA, 0xAB, 16 * 4 * 2 * 2);
      emu::mbar_init(bar, 1);
      emu::mbar_arrive_expect_tx(bar, 16 * 4 * 2 * 2);
      emu::tma_load(g_smem + kTileA, &map, bar, 3, c.data());
      g.expect(emu::mbar_try_wait(bar, 0), "3d: phase not complete");
      const uint16_t* t = reinterpret_cast<const uint16_t*>(g_smem + kTileA);
      for (int i2 = 0; i2 < 2; ++i2)
        for (int i1 = 0; i1 < 4; ++i1)
          for (int i0 = 0; i0 < 16; ++i0) {
            const int x = c[0] + i0, y = c[1] + i1, z = c[2] + i2;
            const bool in = x >= 0 && x < d0 && y >= 0 && y < d1 && z >= 0 && z < d2;
            const uint16_t want = in ? s3[(size_t(z) * d1 + y) * d0 + x] : 0;
            const uint16_t got = t[(i2 * 4 + i1) * 16 + i0];
            g.expect(got == want, "3d at (%d,%d,%d) elem (%d,%d,%d): 0x%04x want 0x%04x", c[0],
                     c[1], c[2], i0, i1, i2, got, want);
          }
      emu::mbar_inval(bar);
    }
  }
  {
    Group g(
        "(f) emulated TMA 2D store (128B swizzle): in-bounds elements only, read through the "
        "swizzle");
    reset_arena();
    auto tile = cute_tile<cute::bfloat16_t, KAtom<cute::bfloat16_t, 128>::type, 64, 64>(kTileA);
    for (int r = 0; r < 64; ++r)
      for (int c = 0; c < 64; ++c) tile(r, c) = cute::bfloat16_t::bitcast(uint16_t(r * 64 + c + 1));
    for (auto [c0, c1] : {std::pair{64, 64}, {-8, -3}, {0, 0}}) {
      std::vector<uint16_t> dst(size_t(rows) * cols, 0xDEAD);
      const emu::EmuTensorMap map =
          make_map(dst.data(), 2, 128, {uint64_t(cols), uint64_t(rows)}, {64, 64});
      emu::tma_store(&map, g_smem + kTileA, 2, std::array<int32_t, 2>{c0, c1}.data());
      g.expect(dst[0] == 0xDEAD || (c0 <= 0 && c1 <= 0), "store performed before bulk wait_group");
      emu::bulk_commit_group();
      emu::bulk_wait_group(0);
      for (int gr = 0; gr < rows; ++gr)
        for (int gc = 0; gc < cols; ++gc) {
          const int r = gr - c1, c = gc - c0;
          const bool in_box = r >= 0 && r < 64 && c >= 0 && c < 64;
          const uint16_t want = in_box ? uint16_t(r * 64 + c + 1) : 0xDEAD;
          g.expect(dst[size_t(gr) * cols + gc] == want,
                   "store at (%d,%d): global (%d,%d) 0x%04x want 0x%04x", c0, c1, gr, gc,
                   dst[size_t(gr) * cols + gc], want);
        }
    }
  }
}

// ---- (g) mbarrier, cp.async, bulk copies, and the misuse reports -------------------------------
static void check_sync_and_misuse() {
  Group g("(g) mbarrier phases, cp.async / bulk deferral, misuse reported");
  reset_arena();
  uint64_t* bar = reinterpret_cast<uint64_t*>(g_static_smem + 8);
  // Phases and parity.
  emu::mbar_init(bar, 2);
  g.expect(!emu::mbar_phase_done(bar, 0), "phase 0 complete right after init");
  emu::mbar_arrive(bar);
  expect_failure(g, "try_wait on an incomplete phase", "would block",
                 [&] { emu::mbar_try_wait(bar, 0); });
  emu::mbar_arrive(bar);
  g.expect(emu::mbar_try_wait(bar, 0), "phase 0 incomplete after 2 of 2 arrivals");
  expect_failure(g, "try_wait parity 1 after one phase", "would block",
                 [&] { emu::mbar_try_wait(bar, 1); });
  emu::mbar_expect_tx(bar, 32);
  emu::mbar_arrive(bar);
  emu::mbar_arrive(bar);
  g.expect(!emu::mbar_phase_done(bar, 1), "phase 1 complete with 32 tx bytes outstanding");
  expect_failure(g, "over-arrival", "over-arrival", [&] { emu::mbar_arrive(bar); });
  // A bulk copy pays the 32 bytes: it lands when the waiter needs it.
  std::vector<uint8_t> gsrc(64);
  for (int i = 0; i < 64; ++i) gsrc[i] = uint8_t(i + 1);
  emu::bulk_copy_g2s(g_smem + 256, gsrc.data(), 32, bar);
  g.expect(g_smem[256] == 0, "bulk copy performed at issue");
  g.expect(emu::mbar_try_wait(bar, 1), "phase 1 incomplete after the bulk copy");
  g.expect(memcmp(g_smem + 256, gsrc.data(), 32) == 0, "bulk copy g2s contents");
  // s2g through the bulk group.
  std::vector<uint8_t> gdst(32, 0);
  emu::bulk_copy_s2g(gdst.data(), g_smem + 256, 32);
  emu::bulk_commit_group();
  g.expect(gdst[0] == 0, "bulk copy s2g performed before wait_group");
  emu::bulk_wait_group(0);
  g.expect(memcmp(gdst.data(), gsrc.data(), 32) == 0, "bulk copy s2g contents");
  // Copies in flight block inval.
  emu::mbar_arrive_expect_tx(bar, 16);
  emu::bulk_copy_g2s(g_smem + 512, gsrc.data(), 16, bar);
  expect_failure(g, "inval with a copy in flight", "in flight", [&] { emu::mbar_inval(bar); });
  emu::mbar_perform_in_flight(bar);
  emu::mbar_inval(bar);
  expect_failure(g, "arrive after inval", "before mbarrier.init", [&] { emu::mbar_arrive(bar); });
  expect_failure(g, "try_wait before init", "before mbarrier.init",
                 [&] { emu::mbar_try_wait(reinterpret_cast<uint64_t*>(g_smem + 8), 0); });
  expect_failure(g, "init count 0", "count", [&] { emu::mbar_init(bar, 0); });

  // cp.async: zero fill, deferred to wait_group, alignment, static __shared__ destination.
  memset(g_smem + 1024, 0xEE, 32);
  emu::cp_async_16(g_smem + 1024, gsrc.data(), 6);
  emu::cp_async_16(g_static_smem + 64, gsrc.data() + 16, 16);
  emu::cp_async_commit();
  emu::cp_async_16(g_smem + 1040, gsrc.data(), 0);
  emu::cp_async_commit();
  g.expect(g_smem[1024] == 0xEE, "cp.async performed at issue");
  emu::cp_async_wait(1);
  bool ok = memcmp(g_smem + 1024, gsrc.data(), 6) == 0;
  for (int i = 6; i < 16; ++i) ok &= g_smem[1024 + i] == 0;
  g.expect(ok, "cp.async src-size 6: copy then zero fill");
  g.expect(memcmp(g_static_smem + 64, gsrc.data() + 16, 16) == 0, "cp.async into static shared");
  g.expect(g_smem[1040] == 0xEE, "cp.async of the newest group performed by wait_group 1");
  emu::cp_async_wait(0);
  g.expect(g_smem[1040] == 0 && g_smem[1055] == 0, "cp.async src-size 0 zero fill");
  expect_failure(g, "cp.async misaligned", "aligned",
                 [&] { emu::cp_async_16(g_smem + 1032, gsrc.data(), 16); });
  expect_failure(g, "cp.async src-size 17", "src-size",
                 [&] { emu::cp_async_16(g_smem + 1024, gsrc.data(), 17); });
  emu::cp_async_commit();
  emu::cp_async_wait(0);

  // TMA / bulk misuse.
  std::vector<uint16_t> src(64 * 64);
  const emu::EmuTensorMap map = make_map(src.data(), 2, 128, {64, 64}, {64, 64});
  emu::mbar_init(bar, 1);
  expect_failure(g, "SW128 box at a 128- but not 1024-aligned address", "1024-byte aligned", [&] {
    emu::tma_load(g_smem + kTileA + 128, &map, bar, 2, std::array<int32_t, 2>{0, 0}.data());
  });
  expect_failure(g, "swizzled box into static shared", "dynamic shared memory only", [&] {
    emu::tma_load(g_static_smem, &map, bar, 2, std::array<int32_t, 2>{0, 0}.data());
  });
  expect_failure(g, "2D map used by a 3D load", "rank", [&] {
    emu::tma_load(g_smem + kTileA, &map, bar, 3, std::array<int32_t, 3>{0, 0, 0}.data());
  });
  emu::EmuTensorMap bad = map;
  bad.magic = 0;
  expect_failure(g, "foreign tensor map", "not an emulated CUtensorMap", [&] {
    emu::tma_load(g_smem + kTileA, &bad, bar, 2, std::array<int32_t, 2>{0, 0}.data());
  });
  bad = map;
  bad.box[0] = 128;
  expect_failure(g, "box row wider than the swizzle span", "exceeds", [&] {
    emu::tma_load(g_smem + kTileA, &bad, bar, 2, std::array<int32_t, 2>{0, 0}.data());
  });
  expect_failure(g, "box past the end of shared memory", "outside", [&] {
    emu::tma_load(g_smem + kArenaBytes - 4096, &map, bar, 2, std::array<int32_t, 2>{0, 0}.data());
  });
  expect_failure(g, "bulk size not a multiple of 16", "multiple of 16",
                 [&] { emu::bulk_copy_g2s(g_smem + 256, gsrc.data(), 24, bar); });
  expect_failure(g, "wgmma descriptor with a base offset", "base offset", [&] {
    float d[8];
    emu::wgmma_fragment(0, 16, emu::GmmaType::kBf16, false, uint64_t(1) << 49, 0, false, d);
  });
  expect_failure(g, "wgmma operand outside shared memory", "outside", [&] {
    float d[8];
    const uint64_t far = dsv3::make_smem_desc(kArenaBytes - 16, 16, 1024, dsv3::SmemSwizzle::k128B);
    emu::wgmma_fragment(0, 16, emu::GmmaType::kBf16, false, far, far, false, d);
  });
  emu::mbar_inval(bar);
}

int main() {
  check_acc_layouts(std::make_integer_sequence<int, 32>{});
  check_descriptors();
  check_swizzles();
  check_conversions();
  check_wgmma_all();
  check_mma_sync();
  check_tma();
  check_sync_and_misuse();
  if (g_failed_groups) {
    printf("%d group(s) FAILED\n", g_failed_groups);
    return 1;
  }
  printf("all groups passed\n");
  return 0;
}
