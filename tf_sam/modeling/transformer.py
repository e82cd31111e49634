"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

import keras
import numpy as np
from keras import layers, ops

from tf_sam.modeling.common import SamLayerNorm, SamMLPBlock


@keras.saving.register_keras_serializable(package="tf_sam")
class SamAttention(layers.Layer):
    """Attention whose q/k/v projections may downsample the width (`internal = C / rate`).

    Shapes: query `(B, Pq, Nq, C)`, key/value `(B, Pk, Nk, C)` -> `(B, max(Pq, Pk), Nq, C)`,
    where `P` is the prompt batch and `Pq` or `Pk` may be 1: a side shared by every
    prompt (the image before its first update) is projected once and broadcast.
    `attention_bias`, when given, is added to the logits and must broadcast to
    `(B*P, heads, Nq, Nk)` (PerSAM's attention similarity, in HF's layout).
    """

    def __init__(self, hidden_size, num_attention_heads, downsample_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.downsample_rate = downsample_rate
        self.internal_dim = hidden_size // downsample_rate
        self.head_dim = self.internal_dim // num_attention_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = layers.Dense(self.internal_dim, name="q_proj")
        self.k_proj = layers.Dense(self.internal_dim, name="k_proj")
        self.v_proj = layers.Dense(self.internal_dim, name="v_proj")
        self.out_proj = layers.Dense(hidden_size, name="out_proj")

    def build(self, input_shape=None):
        shape = (None, self.hidden_size)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.build(shape)
        self.out_proj.build((None, self.internal_dim))

    def _split_heads(self, x):
        # (B, P, N, heads*d) -> (B, P, heads, N, d): rank 5, the most TFLite's BatchMatMul takes.
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], shape[2], self.num_attention_heads, self.head_dim))
        return ops.transpose(x, (0, 1, 3, 2, 4))

    def _plan(self, query, key):
        """"few_keys", "few_queries" or None (project both sides), by multiply-add count.

        With only a few prompt tokens on one side (T = 7 for one point), the 4096 image
        tokens need not be projected to the internal width and back: the projections fold
        into the tiny side (`X (W_q K^T)`, `P (V W_o)`; see `_attend_few_keys` and
        `_attend_few_queries`), which for a single prompt costs ~2.3x fewer FLOPs. Decided
        from static shapes; an unknown prompt count is assumed large, an unknown token
        count is left to `_runtime_plan`.
        """
        (pq, nq), (pk, nk) = query.shape[1:3], key.shape[1:3]
        if nq is None or nk is None:
            return None
        return self._plan_for_counts(pq, nq, pk, nk)

    def _plan_for_counts(self, pq, nq, pk, nk):
        """`_plan` for prompt counts `pq, pk` (None: unknown) and token counts `nq, nk`."""
        if pq is None or pk is None:
            p = 1024
            pq, pk = (1 if pq == 1 else p), (1 if pk == 1 else p)
        else:
            p = max(pq, pk)
        width, inner, heads = self.hidden_size, self.internal_dim, self.num_attention_heads
        project = (pq * nq + 2 * pk * nk) * width * inner + p * nq * inner * width + 2 * p * nq * nk * inner
        few_keys = 4 * pk * nk * width * inner + 2 * p * nq * width * heads * nk
        few_queries = pq * nq * width * inner * 2 + 2 * p * heads * nq * nk * width + 2 * p * nq * inner * width
        best = min(few_keys, few_queries)
        if best > 0.8 * project:
            return None
        return "few_keys" if best == few_keys else "few_queries"

    def _runtime_plan(self, query, key):
        """`(plan, limit)` when one side's token count is known only at run time (the
        exported decoders take any number of points): folding pays up to `limit` tokens
        there, so `call` picks the folded or the projected path per call. None otherwise."""
        (pq, nq), (pk, nk) = query.shape[1:3], key.shape[1:3]
        if (nq is None) == (nk is None):
            return None
        plan, limit = None, 0
        for n in range(1, 1025):
            here = self._plan_for_counts(pq, n if nq is None else nq, pk, n if nk is None else nk)
            if here is None or plan not in (None, here):
                break
            plan, limit = here, n
        return None if plan is None else (plan, limit)

    def _kernel(self, dense, dtype):
        return ops.cast(dense.kernel, dtype), ops.cast(dense.bias, dtype)

    def _head_rows(self, x):
        """`(B, P, N, heads*d)` -> `(B, P, heads*N, heads*d)`: row `(h, n)` is `x[n]` with
        every channel outside head `h` zeroed.

        One matmul with these rows does every head's product at once, laid out
        `(heads*N, ...)`, with no head split: each transpose that splitting needs costs
        oneDNN ~50 us even on 7 tokens, ~0.2 ms per attention.
        """
        rows = ops.expand_dims(x, 2) * self._head_mask(x.dtype)  # (B, P, heads, N, heads*d)
        shape = ops.shape(x)
        return ops.reshape(rows, (shape[0], shape[1], self.num_attention_heads * shape[2], self.internal_dim))

    def _head_mask(self, dtype):
        """`(heads, 1, heads*d)`: 1 where the channel belongs to that row's head."""
        mask = np.repeat(np.eye(self.num_attention_heads, dtype="float32"), self.head_dim, axis=1)
        return ops.convert_to_tensor(mask[:, None, :], dtype)

    def _attend_few_keys(self, query, key, value):
        """Image -> tokens: `(X W_q + b_q) K^T = X (W_q K^T) + b_q K^T` per head, and
        `softmax(.) V W_o = softmax(.) (V W_o)`: both big matmuls are `Nq x C x heads*Nk`.

        Scores are laid out `(heads*Nk, Nq)`: the softmax then runs over a short middle
        axis with every step vectorised along the image, where TF's softmax over 7-long
        rows cost 0.75 ms per block (ViT-B, one prompt)."""
        k = self._head_rows(self.k_proj(key) * self.scale)  # (B, Pk, heads*Nk, inner)
        v = self._head_rows(self.v_proj(value))
        nk = ops.shape(key)[2]
        wq, bq = self._kernel(self.q_proj, query.dtype)
        fold = ops.matmul(k, ops.transpose(wq))  # (B, Pk, heads*Nk, C)
        shift = ops.matmul(k, ops.expand_dims(bq, 1))  # (B, Pk, heads*Nk, 1)
        scores = ops.matmul(fold, ops.transpose(query, (0, 1, 3, 2))) + shift  # (B, P, heads*Nk, Nq)
        return self._mix_into_queries(scores, v, nk)

    def _mix_into_queries(self, scores, value_rows, nk):
        """Softmax of `scores (B, P, heads*Nk, Nq)` over each head's `Nk` rows, then every
        query's mix of `value_rows (B, Pk, heads*Nk, inner)` (head-masked `V`) through
        `W_o`: `(B, P, Nq, C)`."""
        heads = self.num_attention_heads
        s_shape = ops.shape(scores)
        scores = ops.reshape(ops.cast(scores, "float32"), (-1, heads, nk, s_shape[3]))
        exp = ops.exp(scores - ops.max(scores, axis=-2, keepdims=True))
        probs = ops.cast(ops.reshape(exp / ops.sum(exp, axis=-2, keepdims=True), s_shape), value_rows.dtype)
        wo, bo = self._kernel(self.out_proj, value_rows.dtype)
        # Each head's probabilities sum to 1 at every image token, so b_o / heads on every
        # row adds b_o once: no bias pass over the image-sized output.
        values_out = ops.matmul(value_rows, wo) + bo / heads  # (B, Pk, heads*Nk, C)
        return ops.matmul(ops.transpose(probs, (0, 1, 3, 2)), values_out)

    def _attend_few_queries(self, query, key, value):
        """Tokens -> image: `q (X W_k + b_k)^T = (q W_k^T) X^T + const` (the constant per
        query row cancels in the softmax) and `P (X W_v + b_v) = (P X) W_v + b_v` (rows of P
        sum to 1): both big matmuls are `heads*Nq x Nk x C`."""
        heads = self.num_attention_heads
        q = self._head_rows(self.q_proj(query) * self.scale)  # (B, Pq, heads*Nq, inner)
        wk, _ = self._kernel(self.k_proj, key.dtype)
        fold = ops.matmul(q, ops.transpose(wk))  # (B, Pq, heads*Nq, C)
        scores = ops.matmul(fold, ops.transpose(key, (0, 1, 3, 2)))  # (B, P, heads*Nq, Nk)
        probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
        wv, bv = self._kernel(self.v_proj, value.dtype)
        mixed = ops.matmul(ops.matmul(probs, value), wv)  # (B, P, heads*Nq, inner): every head's W_v
        shape = ops.shape(mixed)
        mixed = ops.reshape(mixed, (shape[0], shape[1], heads, shape[2] // heads, self.internal_dim))
        out = ops.sum(mixed * self._head_mask(mixed.dtype), axis=2) + bv  # row (h, n) keeps head h's channels
        return self.out_proj(out)

    def _attend_short_keys(self, query, key, value):
        """Plain attention for few keys (the tokens' self-attention): scores `(Nq, heads*Nk)`
        against head-masked key rows, and the probabilities times head-masked value rows
        land directly in the concatenated-heads layout."""
        heads = self.num_attention_heads
        q = self.q_proj(query) * self.scale
        k = self._head_rows(self.k_proj(key))
        v = self._head_rows(self.v_proj(value))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, P, Nq, heads*Nk)
        shape = ops.shape(scores)
        flat = ops.reshape(ops.cast(scores, "float32"), (-1, shape[2], heads, shape[3] // heads))
        probs = ops.cast(ops.reshape(ops.softmax(flat, axis=-1), shape), v.dtype)
        return self.out_proj(ops.matmul(probs, v))

    def project_image_keys(self, key, value):
        """Image-side work of a tokens -> image attention, for `attend_projected_keys`.

        `key, value (B, 1, N, C)` -> `k_t (B, 1, heads, d, N)`, `v (B, 1, heads, N, d)`.
        """
        k_t = ops.transpose(self._split_heads(self.k_proj(key)), (0, 1, 2, 4, 3))
        return k_t, self._split_heads(self.v_proj(value))

    def attend_projected_keys(self, query, k_t, v, attention_bias=None):
        """Tokens -> image against `project_image_keys`'s output: `query (B, P, Nq, C)` ->
        `(B, P, Nq, C)`, the same as `call(query, key, value)`."""
        return self._attend_heads(self._split_heads(self.q_proj(query) * self.scale), k_t, v, attention_bias)

    def project_image_queries(self, query):
        """Image-side work of an image -> tokens attention, for `attend_projected_queries`.

        `query (B, 1, N, C)` -> `(B, 1, heads, d, N)`, scaled.
        """
        q = self._split_heads(self.q_proj(query) * self.scale)
        return ops.transpose(q, (0, 1, 2, 4, 3))

    def attend_projected_queries(self, q_t, key, value):
        """Image -> tokens against `project_image_queries`'s output: `key, value
        (B, P, Nk, C)` -> `(B, P, N, C)`, the same as `call(query, key, value)`."""
        k = self._split_heads(self.k_proj(key))  # (B, P, heads, Nk, d)
        scores = ops.matmul(k, q_t)  # (B, P, heads, Nk, N)
        shape = ops.shape(scores)
        scores = ops.reshape(scores, (shape[0], shape[1], shape[2] * shape[3], shape[4]))
        return self._mix_into_queries(scores, self._head_rows(self.v_proj(value)), shape[3])

    def call(self, query, key, value, attention_bias=None):
        if attention_bias is None:
            plan = self._plan(query, key)
            if plan == "few_keys":
                return self._attend_few_keys(query, key, value)
            if plan == "few_queries":
                return self._attend_few_queries(query, key, value)
            # Head-masked rows multiply the score and mixing work by `heads`: only for few keys.
            if key.shape[2] is not None and key.shape[2] * self.num_attention_heads <= 512:
                return self._attend_short_keys(query, key, value)
            runtime = self._runtime_plan(query, key)
            if runtime is not None:
                plan, limit = runtime
                folded = self._attend_few_keys if plan == "few_keys" else self._attend_few_queries
                tokens = ops.shape(query if query.shape[2] is None else key)[2]
                return ops.cond(
                    tokens <= limit, lambda: folded(query, key, value), lambda: self._attend_projected(query, key, value)
                )
        return self._attend_projected(query, key, value, attention_bias)

    def _attend_projected(self, query, key, value, attention_bias=None):
        """Both sides projected to the internal width, then per-head attention: `query
        (B, Pq, Nq, C)`, `key, value (B, Pk, Nk, C)` -> `(B, max(Pq, Pk), Nq, C)`."""
        q = self._split_heads(self.q_proj(query) * self.scale)
        k_t = ops.transpose(self._split_heads(self.k_proj(key)), (0, 1, 2, 4, 3))
        return self._attend_heads(q, k_t, self._split_heads(self.v_proj(value)), attention_bias)

    def _attend_heads(self, q, k_t, v, attention_bias=None):
        """Per-head attention: `q (B, P, heads, Nq, d)` (scaled), `k_t (B, P, heads, d, Nk)`,
        `v (B, P, heads, Nk, d)` -> `(B, P, Nq, C)` through `W_o`."""
        scores = ops.matmul(q, k_t)  # (B, P, heads, Nq, Nk)
        shape = ops.shape(scores)
        if attention_bias is not None:
            bias = ops.cast(attention_bias, scores.dtype)
            bias = ops.reshape(bias, (-1, shape[1]) + tuple(ops.shape(bias)[1:])) if bias.shape[0] != 1 else bias[None]
            scores = scores + bias
        # Softmax on a rank-4 view: what every runtime's kernel accepts.
        flat = ops.reshape(ops.cast(scores, "float32"), (-1, shape[2], shape[3], shape[4]))
        probs = ops.cast(ops.reshape(ops.softmax(flat, axis=-1), shape), v.dtype)
        out = ops.transpose(ops.matmul(probs, v), (0, 1, 3, 2, 4))  # (B, P, Nq, heads, d)
        out_shape = ops.shape(out)
        out = ops.reshape(out, (out_shape[0], out_shape[1], out_shape[2], self.internal_dim))
        return self.out_proj(out)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            downsample_rate=self.downsample_rate,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamTwoWayAttentionBlock(layers.Layer):
    """Self-attention of tokens, token->image, MLP, image->token; post-norm.

    Shapes: queries `(B, P, T, C)`, keys `(B, P or 1, HW, C)` -> `(queries (B, P, T, C),
    keys (B, P, HW, C), image update (B, P, HW, C))`. Keys shared by all prompts (P = 1)
    are projected once; they become per-prompt after the image->token update.
    """

    def __init__(self, hidden_size, num_attention_heads, mlp_dim, attention_downsample_rate=2,
                 skip_first_layer_pe=False, layer_norm_eps=1e-6, hidden_act="relu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.mlp_dim = mlp_dim
        self.attention_downsample_rate = attention_downsample_rate
        self.skip_first_layer_pe = skip_first_layer_pe
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        norm = lambda name: SamLayerNorm(epsilon=layer_norm_eps, name=name)
        self.self_attn = SamAttention(hidden_size, num_attention_heads, 1, name="self_attn")
        self.layer_norm1 = norm("layer_norm1")
        self.cross_attn_token_to_image = SamAttention(
            hidden_size, num_attention_heads, attention_downsample_rate, name="cross_attn_token_to_image"
        )
        self.layer_norm2 = norm("layer_norm2")
        self.mlp = SamMLPBlock(hidden_size, mlp_dim, hidden_act, name="mlp")
        self.layer_norm3 = norm("layer_norm3")
        self.layer_norm4 = norm("layer_norm4")
        self.cross_attn_image_to_token = SamAttention(
            hidden_size, num_attention_heads, attention_downsample_rate, name="cross_attn_image_to_token"
        )

    def build(self, input_shape=None):
        shape = (None, self.hidden_size)
        for sub in (self.self_attn, self.cross_attn_token_to_image, self.cross_attn_image_to_token):
            sub.build()
        for norm in (self.layer_norm1, self.layer_norm2, self.layer_norm3, self.layer_norm4):
            norm.build(shape)
        self.mlp.build(shape)

    def project_image(self, keys, key_pe):
        """The block's prompt-independent work: both cross attentions' image projections
        while the image is still the one every prompt shares. `keys, key_pe (B, 1, HW, C)`
        -> `(k_t, v, q_t)` for `call(..., image_projections=...)`."""
        k = keys + key_pe
        k_t, v = self.cross_attn_token_to_image.project_image_keys(k, keys)
        return k_t, v, self.cross_attn_image_to_token.project_image_queries(k)

    def call(self, queries, keys, query_pe, key_pe, attention_bias=None, image_projections=None):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.layer_norm1(queries)

        if image_projections is not None:
            k_t, v, q_t = image_projections
            attended = self.cross_attn_token_to_image.attend_projected_keys(queries + query_pe, k_t, v, attention_bias)
        else:
            # The image is unchanged until the block's end: one positional add serves both attentions.
            k = keys + key_pe
            attended = self.cross_attn_token_to_image(queries + query_pe, k, keys, attention_bias)
        queries = self.layer_norm2(queries + attended)
        queries = self.layer_norm3(queries + self.mlp(queries))

        if image_projections is not None:
            image_update = self.cross_attn_image_to_token.attend_projected_queries(q_t, queries + query_pe, queries)
        else:
            image_update = self.cross_attn_image_to_token(k, queries + query_pe, queries)
        keys = self.layer_norm4(keys + image_update)
        return queries, keys, image_update

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            mlp_dim=self.mlp_dim, attention_downsample_rate=self.attention_downsample_rate,
            skip_first_layer_pe=self.skip_first_layer_pe, layer_norm_eps=self.layer_norm_eps,
            hidden_act=self.hidden_act,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamTwoWayTransformer(layers.Layer):
    """Stack of two-way blocks plus a final token->image attention.

    Args (call):
        point_embeddings: `(B, P, T, C)` output + prompt tokens.
        image_embeddings: `(B, HW, C)` flattened image tokens, shared by the B image's P
            prompts until the first image->token update makes them per-prompt.
        image_pe: `(1, HW, C)` positional encoding of the image tokens.
        attention_similarity: optional PerSAM bias for token->image attention.
        target_embedding: optional PerSAM target added to the tokens before each block.
        image_projections: `project_image(image_embeddings, image_pe)` of these same
            inputs, to skip recomputing it.
    Returns: `(queries (B, P, T, C), keys (B, P, HW, C), per-block image updates
    (B, P, HW, C))`.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        from tf_sam.config import SamMaskDecoderConfig

        if isinstance(config, dict):
            config = SamMaskDecoderConfig.from_dict(config)
        self.config = config
        c = config
        self.blocks = [
            SamTwoWayAttentionBlock(
                c.hidden_size, c.num_attention_heads, c.mlp_dim, c.attention_downsample_rate,
                skip_first_layer_pe=(i == 0), layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act,
                name=f"layers_{i}",
            )
            for i in range(c.num_hidden_layers)
        ]
        self.final_attn_token_to_image = SamAttention(
            c.hidden_size, c.num_attention_heads, c.attention_downsample_rate, name="final_attn_token_to_image"
        )
        # PyTorch's nn.LayerNorm default, as in Meta's and HF's code (not the config eps).
        self.layer_norm_final_attn = SamLayerNorm(epsilon=1e-5, name="layer_norm_final_attn")

    def build(self, input_shape=None):
        for block in self.blocks:
            block.build()
        self.final_attn_token_to_image.build()
        self.layer_norm_final_attn.build((None, self.config.hidden_size))

    def project_image(self, image_embeddings, image_pe):
        """Work of the first block that no prompt changes, done once per image.

        `image_embeddings (B, HW, C)`, `image_pe (1, HW, C)` -> a tuple of tensors for
        `call(..., image_projections=...)`: then each call skips the first block's image
        projections (for one ViT-B point, ~70% of that block's multiply-adds). Empty without
        blocks.
        """
        if not self.blocks:
            return ()
        return self.blocks[0].project_image(ops.expand_dims(image_embeddings, 1), ops.expand_dims(image_pe, 1))

    def call(self, point_embeddings, image_embeddings, image_pe, attention_similarity=None,
             target_embedding=None, image_projections=None):
        keys = ops.expand_dims(image_embeddings, 1)
        key_pe = ops.expand_dims(image_pe, 1)
        if target_embedding is not None:
            # HF adds the target in place to the tensor that is also the query PE, so from
            # the first block on the PE carries the target once; replicate that exactly.
            point_embeddings = point_embeddings + target_embedding
        queries = point_embeddings
        updates = []
        for i, block in enumerate(self.blocks):
            if target_embedding is not None and i > 0:
                queries = queries + target_embedding
            queries, keys, update = block(
                queries, keys, point_embeddings, key_pe, attention_similarity,
                image_projections=image_projections if i == 0 and image_projections else None,
            )
            updates.append(update)
        q, k = queries + point_embeddings, keys + key_pe
        queries = self.layer_norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys, tuple(updates)

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config
