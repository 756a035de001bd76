#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
void quantize_row_q4_0_ref(const float*, void*, int64_t);
void quantize_row_q4_1_ref(const float*, void*, int64_t);
void quantize_row_q5_0_ref(const float*, void*, int64_t);
void quantize_row_q5_1_ref(const float*, void*, int64_t);
void quantize_row_q8_0_ref(const float*, void*, int64_t);
void quantize_row_q8_1_ref(const float*, void*, int64_t);
typedef void (*dotf)(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q4_0_q8_0(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q4_1_q8_1(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q5_0_q8_0(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q5_1_q8_1(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q8_0_q8_0(int, float*, size_t, const void*, size_t, const void*, size_t, int);
#define NB 96
void ggml_cpu_init(void);
int main() {
  ggml_cpu_init();
  static float x[NB*32];
  FILE *f = fopen("input.f32", "rb"); fread(x, 4, NB*32, f); fclose(f);
  typedef void (*qf)(const float*, void*, int64_t);
  qf qs[6] = {quantize_row_q4_0_ref, quantize_row_q4_1_ref, quantize_row_q5_0_ref, quantize_row_q5_1_ref, quantize_row_q8_0_ref, quantize_row_q8_1_ref};
  int sz[6] = {18, 20, 22, 24, 34, 36};
  const char *names[6] = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1"};
  static unsigned char out[6][NB*36];
  for (int t = 0; t < 6; t++) {
    qs[t](x, out[t], NB*32);
    char fn[64]; sprintf(fn, "%s.bin", names[t]);
    f = fopen(fn, "wb"); fwrite(out[t], 1, NB*sz[t], f); fclose(f);
  }
  /* dots: weights = blocks [16, 16+nb) of each weight type, acts = blocks [48, 48+nb) of its act type */
  dotf dots[5] = {ggml_vec_dot_q4_0_q8_0, ggml_vec_dot_q4_1_q8_1, ggml_vec_dot_q5_0_q8_0, ggml_vec_dot_q5_1_q8_1, ggml_vec_dot_q8_0_q8_0};
  int act[5] = {4, 5, 4, 5, 4};
  int nbs[7] = {1, 2, 3, 5, 8, 17, 48};
  f = fopen("dots.f32", "wb");
  for (int t = 0; t < 5; t++) for (int i = 0; i < 7; i++) {
    float s = 0;
    dots[t](nbs[i]*32, &s, 0, out[t] + 16*sz[t], 0, out[act[t]] + 48*sz[act[t]], 0, 1);
    fwrite(&s, 4, 1, f);
    printf("%s nb=%d %g\n", names[t], nbs[i], s);
  }
  fclose(f);
  return 0;
}
