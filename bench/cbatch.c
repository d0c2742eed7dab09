// Peer (a) of bench_runtime.py: llama.cpp driving a GGUF directly, no HTTP, no Python.
// N sequences share one prompt; all are prefilled in one batch, then every step decodes one
// token for each sequence in one llama_decode, greedy (argmax), EOS ignored. The context is
// configured as Realm's engine configures it (unified KV, same n_ctx, n_batch, threads).
//
// Usage: cbatch MODEL.gguf N_SEQ N_GEN N_THREADS N_CTX PROMPT_FILE
// Prints: tokens_generated seconds
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)level; (void)text; (void)data;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL N_SEQ N_GEN N_THREADS N_CTX PROMPT_FILE\n", argv[0]);
        return 2;
    }
    const int n_seq = atoi(argv[2]), n_gen = atoi(argv[3]), n_threads = atoi(argv[4]), n_ctx = atoi(argv[5]);
    FILE *f = fopen(argv[6], "rb");
    if (!f) { perror("prompt"); return 2; }
    char prompt[65536];
    size_t plen = fread(prompt, 1, sizeof(prompt) - 1, f);
    fclose(f);
    prompt[plen] = 0;

    llama_log_set(quiet, NULL);
    /* A portable build (scripts/build-llama.sh) holds its CPU backend as loadable variants: load the
       one Realm's runtime picks (bench_runtime.py passes its path), as the runtime does. */
    const char *backend = getenv("CBATCH_GGML_BACKEND");
    if (backend && *backend && !ggml_backend_load(backend)) { fprintf(stderr, "cannot load %s\n", backend); return 1; }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = n_seq < 16 ? 16 : n_seq;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.kv_unified = true;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }

    llama_token toks[8192];
    int n_prompt = llama_tokenize(vocab, prompt, (int)plen, toks, 8192, false, true);
    if (n_prompt <= 0 || n_prompt * n_seq > 512) { fprintf(stderr, "prompt too long for one batch\n"); return 1; }

    struct llama_batch batch = llama_batch_init(512, 0, 1);
    llama_token *last = calloc(n_seq, sizeof(llama_token));
    int *row = calloc(n_seq, sizeof(int));

    double t0 = now();
    batch.n_tokens = 0;
    for (int s = 0; s < n_seq; s++) {
        for (int i = 0; i < n_prompt; i++) {
            int k = batch.n_tokens++;
            batch.token[k] = toks[i];
            batch.pos[k] = i;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = s;
            batch.logits[k] = (i == n_prompt - 1);
            if (i == n_prompt - 1) row[s] = k;
        }
    }
    long generated = 0;
    for (int step = 0; step < n_gen; step++) {
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        for (int s = 0; s < n_seq; s++) {
            const float *lg = llama_get_logits_ith(ctx, row[s]);
            int best = 0;
            for (int v = 1; v < n_vocab; v++) if (lg[v] > lg[best]) best = v;
            last[s] = best;
        }
        generated += n_seq;
        batch.n_tokens = 0;
        for (int s = 0; s < n_seq; s++) {
            int k = batch.n_tokens++;
            batch.token[k] = last[s];
            batch.pos[k] = n_prompt + step;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = s;
            batch.logits[k] = 1;
            row[s] = k;
        }
    }
    double dt = now() - t0;
    printf("%ld %.6f\n", generated, dt);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
