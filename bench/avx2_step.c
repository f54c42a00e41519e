// The inner loop of cae's AVX2 direct convolution kernel as LLVM compiles it (objdump of
// cae_kernels::direct::avx2::forward_image: per (channel, tap) a tap offset from a table, 2 row
// loads, 6 broadcasts, 12 FMAs), run alone on one thread over a 16-channel padded 32x32 image
// (74 KiB; the tiles read only its first 18 columns, so about half of it, more of it from L1
// than the kernel in place, which sweeps whole rows), and a 4 x 3 block (3 row loads, 4
// broadcasts) beside it. Each round prints both against one thread's FMA peak measured in the
// same round: it tells whether the instruction mix itself holds the kernel below the peak.
//
//   gcc -O2 -o /tmp/avx2_step bench/avx2_step.c && /tmp/avx2_step
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float img[16*34*34+64] __attribute__((aligned(64)));
static float wts[16*9*8] __attribute__((aligned(64)));
static long taps[16*9];
#define Z "vxorps %%ymm0,%%ymm0,%%ymm0\n vmovaps %%ymm0,%%ymm1\n vmovaps %%ymm0,%%ymm2\n vmovaps %%ymm0,%%ymm3\n vmovaps %%ymm0,%%ymm4\n vmovaps %%ymm0,%%ymm5\n vmovaps %%ymm0,%%ymm6\n vmovaps %%ymm0,%%ymm7\n vmovaps %%ymm0,%%ymm8\n vmovaps %%ymm0,%%ymm9\n vmovaps %%ymm0,%%ymm10\n vmovaps %%ymm0,%%ymm11\n"
// one tile: K taps; x0 and x1 are the byte offsets of the positions
static void tile62(long K, long x0, long x1){
  long k=0; const float*w=wts;
  __asm__ volatile(Z
  "1:\n mov (%[t],%[k],8), %%r8\n lea (%[src],%%r8,4), %%r8\n"
  "vmovups (%%r8,%[x0]), %%ymm12\n vmovups (%%r8,%[x1]), %%ymm13\n"
  "vbroadcastss 0(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm0\n vfmadd231ps %%ymm13,%%ymm14,%%ymm1\n"
  "vbroadcastss 4(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm2\n vfmadd231ps %%ymm13,%%ymm14,%%ymm3\n"
  "vbroadcastss 8(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm4\n vfmadd231ps %%ymm13,%%ymm14,%%ymm5\n"
  "vbroadcastss 12(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm6\n vfmadd231ps %%ymm13,%%ymm14,%%ymm7\n"
  "vbroadcastss 16(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm8\n vfmadd231ps %%ymm13,%%ymm14,%%ymm9\n"
  "vbroadcastss 20(%[w]), %%ymm14\n vfmadd231ps %%ymm12,%%ymm14,%%ymm10\n vfmadd231ps %%ymm13,%%ymm14,%%ymm11\n"
  "add $24, %[w]\n inc %[k]\n cmp %[k], %[K]\n jne 1b\n"
  : [k]"+r"(k), [w]"+r"(w) : [t]"r"(taps), [src]"r"(img), [x0]"r"(x0), [x1]"r"(x1), [K]"r"(K) : "r8","memory");
}
static void tile43(long K, long x0, long x1, long x2){
  long k=0; const float*w=wts;
  __asm__ volatile(Z
  "1:\n mov (%[t],%[k],8), %%r8\n lea (%[src],%%r8,4), %%r8\n"
  "vmovups (%%r8,%[x0]), %%ymm12\n vmovups (%%r8,%[x1]), %%ymm13\n vmovups (%%r8,%[x2]), %%ymm14\n"
  "vbroadcastss 0(%[w]), %%ymm15\n vfmadd231ps %%ymm12,%%ymm15,%%ymm0\n vfmadd231ps %%ymm13,%%ymm15,%%ymm1\n vfmadd231ps %%ymm14,%%ymm15,%%ymm2\n"
  "vbroadcastss 4(%[w]), %%ymm15\n vfmadd231ps %%ymm12,%%ymm15,%%ymm3\n vfmadd231ps %%ymm13,%%ymm15,%%ymm4\n vfmadd231ps %%ymm14,%%ymm15,%%ymm5\n"
  "vbroadcastss 8(%[w]), %%ymm15\n vfmadd231ps %%ymm12,%%ymm15,%%ymm6\n vfmadd231ps %%ymm13,%%ymm15,%%ymm7\n vfmadd231ps %%ymm14,%%ymm15,%%ymm8\n"
  "vbroadcastss 12(%[w]), %%ymm15\n vfmadd231ps %%ymm12,%%ymm15,%%ymm9\n vfmadd231ps %%ymm13,%%ymm15,%%ymm10\n vfmadd231ps %%ymm14,%%ymm15,%%ymm11\n"
  "add $16, %[w]\n inc %[k]\n cmp %[k], %[K]\n jne 1b\n"
  : [k]"+r"(k), [w]"+r"(w) : [t]"r"(taps), [src]"r"(img), [x0]"r"(x0), [x1]"r"(x1), [x2]"r"(x2), [K]"r"(K) : "r8","memory");
}
// The FMA peak of one thread: 12 independent sums, operands in registers.
static void peak(long n){
  __asm__ volatile(Z
  "1:\n"
  "vfmadd231ps %%ymm12,%%ymm14,%%ymm0\n vfmadd231ps %%ymm12,%%ymm15,%%ymm1\n"
  "vfmadd231ps %%ymm13,%%ymm14,%%ymm2\n vfmadd231ps %%ymm13,%%ymm15,%%ymm3\n"
  "vfmadd231ps %%ymm12,%%ymm14,%%ymm4\n vfmadd231ps %%ymm12,%%ymm15,%%ymm5\n"
  "vfmadd231ps %%ymm13,%%ymm14,%%ymm6\n vfmadd231ps %%ymm13,%%ymm15,%%ymm7\n"
  "vfmadd231ps %%ymm12,%%ymm14,%%ymm8\n vfmadd231ps %%ymm12,%%ymm15,%%ymm9\n"
  "vfmadd231ps %%ymm13,%%ymm14,%%ymm10\n vfmadd231ps %%ymm13,%%ymm15,%%ymm11\n"
  "dec %0\n jnz 1b\n" : "+r"(n) :: "memory");
}
int main(){
  for(int i=0;i<16*34*34+64;i++) img[i]=1e-3f*(i%7);
  for(int i=0;i<16*9*8;i++) wts[i]=1e-3f*(i%5);
  long wp=34; for(int k=0;k<144;k++) taps[k]=k/9*34*34 + k%9/3*wp + k%3;
  long reps=200000;
  for(int round=0;round<5;round++){
    double t0=now();
    for(long r=0;r<reps;r++){ long u=r%64; long y=u/2, x=(u%2)*8; tile62(144, (y*wp+x)*4, (y*wp+x+8)*4); }
    double a=reps*144*12*16/(now()-t0)/1e9;
    t0=now();
    for(long r=0;r<reps;r++){ long u=r%64; long y=u/2, x=(u%2)*8; tile43(144, (y*wp+x)*4, (y*wp+x+8)*4, ((y+1)%32*wp+x)*4); }
    double b=reps*144*12*16/(now()-t0)/1e9;
    t0=now();
    peak(reps*144);
    double p=reps*144*12*16/(now()-t0)/1e9;
    printf("one thread: peak %.0f  6x2 %.0f (%.0f%%)  4x3 %.0f (%.0f%%) GFLOP/s\n",p,a,100*a/p,b,100*b/p);
  }
}
