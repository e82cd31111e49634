"""SAM's ViT image encoder: patch embedding, windowed/global attention with decomposed
relative positions, MLP blocks and the convolutional neck. Channels-last throughout."""

import keras
import numpy as np
from keras import layers, ops

from tf_sam.modeling.common import SamLayerNorm, SamMLPBlock


def _relative_position_index(size):
    """Index table `(size, size)` into a `(2 * size - 1, d)` relative-position table.

    Entry `[q, k]` is `q - k + size - 1`, SAM's offset for equal query and key sizes.
    """
    coords = np.arange(size)
    return (coords[:, None] - coords[None, :] + size - 1).astype("int32")


# Attention-score elements (per image) computed at once: 2**26 floats = 256 MiB.
_ATTENTION_CHUNK = 1 << 26


@keras.saving.register_keras_serializable(package="tf_sam")
class SamVisionAttention(layers.Layer):
    """Multi-head self-attention with decomposed relative position bias (MViTv2).

    Args:
        hidden_size: channel width `C`.
        num_attention_heads: number of heads; `C // heads` is the head size.
        input_size: side of the square token grid this layer attends over (the window
            size, or the whole embedding grid for global layers); sizes the rel-pos tables.
        qkv_bias: whether the fused qkv projection has a bias.
        use_rel_pos: add the decomposed relative position bias.

    Shapes: `(B, h, w, C)` -> `(B, h, w, C)`; with `return_attention` also the
    attention probabilities `(B, heads, h*w, h*w)`.
    """

    def __init__(self, hidden_size, num_attention_heads, input_size, qkv_bias=True, use_rel_pos=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.input_size = input_size
        self.qkv_bias = qkv_bias
        self.use_rel_pos = use_rel_pos
        self.head_dim = hidden_size // num_attention_heads
        self.scale = self.head_dim**-0.5
        self.qkv = layers.Dense(3 * hidden_size, use_bias=qkv_bias, name="qkv")
        self.proj = layers.Dense(hidden_size, name="proj")

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        if self.use_rel_pos:
            table = (2 * self.input_size - 1, self.head_dim)
            self.rel_pos_h = self.add_weight(shape=table, initializer="zeros", name="rel_pos_h")
            self.rel_pos_w = self.add_weight(shape=table, initializer="zeros", name="rel_pos_w")

    def _relative_bias(self, query, height, width, row_start=0):
        """Decomposed rel-pos terms for `query (B*heads, r, w, d)`, the query rows
        `row_start .. row_start + r` of the `height x width` grid.

        Returns `rel_h (B*heads, r, w, h, 1)` and `rel_w (B*heads, r, w, 1, w)`, whose
        sum is the `(r*w, h*w)` bias without materialising the full table per head.
        """
        if height != self.input_size or width != self.input_size:
            raise ValueError(
                f"SamVisionAttention was built for a {self.input_size}x{self.input_size} grid, "
                f"got {height}x{width}; the image size must match the config."
            )
        rows = query.shape[1]
        index = _relative_position_index(self.input_size)
        rel_h_table = ops.take(ops.cast(self.rel_pos_h, query.dtype), index[row_start:row_start + rows], axis=0)
        rel_w_table = ops.take(ops.cast(self.rel_pos_w, query.dtype), index, axis=0)
        rel_h = ops.einsum("bhwc,hkc->bhwk", query, rel_h_table)
        rel_w = ops.einsum("bhwc,wkc->bhwk", query, rel_w_table)
        return ops.expand_dims(rel_h, -1), ops.expand_dims(rel_w, -2)

    def _rows_per_chunk(self, height, width):
        """Query rows attended at once, so one chunk's scores stay under `_ATTENTION_CHUNK`."""
        per_row = self.num_attention_heads * width * height * width
        chunks = -(-per_row * height // _ATTENTION_CHUNK)
        return -(-height // max(chunks, 1))

    def call(self, x, return_attention=False):
        batch = ops.shape(x)[0]
        height, width = x.shape[1], x.shape[2]
        tokens = height * width
        heads, head_dim = self.num_attention_heads, self.head_dim

        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, heads, head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        query, key, value = qkv[0], qkv[1], qkv[2]  # (B, heads, N, d)
        key_t = ops.transpose(key, (0, 1, 3, 2))

        # Global layers would hold several (heads, N, N) score tensors at once (0.8 GB each
        # for ViT-B at 1024 px); attending a band of query rows at a time bounds that
        # without changing the result. Windowed layers fit in one chunk.
        step = height if return_attention else self._rows_per_chunk(height, width)
        outputs, all_probs = [], []
        for start in range(0, height, step):
            rows = min(step, height - start)
            q = query if rows == height else query[:, :, start * width:(start + rows) * width]
            scores = ops.matmul(q * self.scale, key_t)  # (B, heads, rows*w, N)
            if self.use_rel_pos:
                grid_query = ops.reshape(q, (batch * heads, rows, width, head_dim))
                rel_h, rel_w = self._relative_bias(grid_query, height, width, start)
                scores = ops.reshape(scores, (batch * heads, rows, width, height, width))
                scores = scores + rel_h + rel_w
                scores = ops.reshape(scores, (batch, heads, rows * width, tokens))
            probs = ops.softmax(ops.cast(scores, "float32"), axis=-1)
            probs = ops.cast(probs, value.dtype)
            outputs.append(ops.matmul(probs, value))  # (B, heads, rows*w, d)
            all_probs.append(probs)
        out = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=2)
        out = ops.transpose(out, (0, 2, 1, 3))
        out = self.proj(ops.reshape(out, (batch, height, width, self.hidden_size)))
        return (out, all_probs[0]) if return_attention else out

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            input_size=self.input_size, qkv_bias=self.qkv_bias, use_rel_pos=self.use_rel_pos,
        )
        return config


def window_partition(x, window_size):
    """Splits `(B, H, W, C)` into windows `(B * nH * nW, ws, ws, C)`, zero-padding H, W.

    Uses only rank <= 5 tensors so the graph converts to TFLite builtins.
    Returns the windows and the padded `(Hp, Wp)`.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        x = ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    padded_h, padded_w = height + pad_h, width + pad_w
    rows, cols = padded_h // window_size, padded_w // window_size
    # (B*rows, ws, cols, ws, C) -> (B*rows, cols, ws, ws, C)
    x = ops.reshape(x, (-1, window_size, cols, window_size, channels))
    x = ops.transpose(x, (0, 2, 1, 3, 4))
    return ops.reshape(x, (-1, window_size, window_size, channels)), (padded_h, padded_w)


def window_unpartition(windows, window_size, padded_size, original_size):
    """Inverse of `window_partition`: `(B * nH * nW, ws, ws, C)` -> `(B, H, W, C)`."""
    padded_h, padded_w = padded_size
    height, width = original_size
    channels = windows.shape[-1]
    cols = padded_w // window_size
    x = ops.reshape(windows, (-1, cols, window_size, window_size, channels))
    x = ops.transpose(x, (0, 2, 1, 3, 4))
    x = ops.reshape(x, (-1, padded_h, padded_w, channels))
    if padded_h != height or padded_w != width:
        x = x[:, :height, :width, :]
    return x


@keras.saving.register_keras_serializable(package="tf_sam")
class SamVisionLayer(layers.Layer):
    """Pre-norm transformer block; attends within windows unless `window_size == 0`.

    Shapes: `(B, h, w, C)` -> `(B, h, w, C)`.
    """

    def __init__(self, hidden_size, num_attention_heads, mlp_dim, window_size, grid_size,
                 qkv_bias=True, use_rel_pos=True, layer_norm_eps=1e-6, hidden_act="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.mlp_dim = mlp_dim
        self.window_size = window_size
        self.grid_size = grid_size
        self.qkv_bias = qkv_bias
        self.use_rel_pos = use_rel_pos
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.layer_norm1 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm1")
        self.attn = SamVisionAttention(
            hidden_size, num_attention_heads, input_size=window_size or grid_size,
            qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, name="attn",
        )
        self.layer_norm2 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm2")
        self.mlp = SamMLPBlock(hidden_size, mlp_dim, hidden_act, name="mlp")

    def build(self, input_shape):
        self.layer_norm1.build(input_shape)
        side = self.window_size or self.grid_size
        self.attn.build((None, side, side, self.hidden_size))
        self.layer_norm2.build(input_shape)
        self.mlp.build(input_shape)

    def call(self, x, return_attention=False):
        shortcut = x
        x = self.layer_norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
        x = self.attn(x, return_attention=return_attention)
        probs = None
        if return_attention:
            x, probs = x
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, padded, size)
        x = shortcut + x
        x = x + self.mlp(self.layer_norm2(x))
        return (x, probs) if return_attention else x

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            mlp_dim=self.mlp_dim, window_size=self.window_size, grid_size=self.grid_size,
            qkv_bias=self.qkv_bias, use_rel_pos=self.use_rel_pos,
            layer_norm_eps=self.layer_norm_eps, hidden_act=self.hidden_act,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamVisionNeck(layers.Layer):
    """1x1 conv, LayerNorm, 3x3 conv, LayerNorm: ViT width -> `output_channels`.

    Shapes: `(B, h, w, C)` -> `(B, h, w, output_channels)`.
    """

    def __init__(self, output_channels, layer_norm_eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = output_channels
        self.layer_norm_eps = layer_norm_eps
        self.conv1 = layers.Conv2D(output_channels, 1, use_bias=False, name="conv1")
        self.layer_norm1 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm1")
        self.conv2 = layers.Conv2D(output_channels, 3, padding="same", use_bias=False, name="conv2")
        self.layer_norm2 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm2")

    def build(self, input_shape):
        out_shape = tuple(input_shape[:-1]) + (self.output_channels,)
        self.conv1.build(input_shape)
        self.layer_norm1.build(out_shape)
        self.conv2.build(out_shape)
        self.layer_norm2.build(out_shape)

    def call(self, x):
        x = self.layer_norm1(self.conv1(x))
        return self.layer_norm2(self.conv2(x))

    def get_config(self):
        config = super().get_config()
        config.update(output_channels=self.output_channels, layer_norm_eps=self.layer_norm_eps)
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamVisionEncoder(layers.Layer):
    """The full image encoder.

    Args:
        config: a `SamVisionConfig` or its dict.

    Shapes: `pixel_values (B, S, S, 3)` with `S = image_size` -> image embeddings
    `(B, S/p, S/p, output_channels)`. With `output_hidden_states` / `output_attentions`
    also returns a tuple of `num_hidden_layers + 1` hidden states `(B, S/p, S/p, C)` (patch
    embeddings, then each block) / per-layer attention probabilities `(B*windows, heads, N, N)`.
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        from tf_sam.config import SamVisionConfig

        if isinstance(config, dict):
            config = SamVisionConfig.from_dict(config)
        self.config = config
        self.grid_size = config.image_embedding_size
        self.patch_embed = layers.Conv2D(
            config.hidden_size, config.patch_size, strides=config.patch_size, name="patch_embed"
        )
        self.vision_layers = [
            SamVisionLayer(
                config.hidden_size, config.num_attention_heads, config.mlp_dim,
                window_size=0 if i in config.global_attn_indexes else config.window_size,
                grid_size=self.grid_size, qkv_bias=config.qkv_bias, use_rel_pos=config.use_rel_pos,
                layer_norm_eps=config.layer_norm_eps, hidden_act=config.hidden_act, name=f"layers_{i}",
            )
            for i in range(config.num_hidden_layers)
        ]
        self.neck = SamVisionNeck(config.output_channels, name="neck")

    def build(self, input_shape=None):
        c = self.config
        self.patch_embed.build((None, c.image_size, c.image_size, c.num_channels))
        grid = (None, self.grid_size, self.grid_size, c.hidden_size)
        if c.use_abs_pos:
            self.pos_embed = self.add_weight(
                shape=(1, self.grid_size, self.grid_size, c.hidden_size), initializer="zeros", name="pos_embed"
            )
        for layer in self.vision_layers:
            layer.build(grid)
        self.neck.build(grid)

    def call(self, pixel_values, output_hidden_states=False, output_attentions=False):
        x = self.patch_embed(pixel_values)
        if self.config.use_abs_pos:
            x = x + ops.cast(self.pos_embed, x.dtype)
        # As in HF: the embedded patches first, then each block's output.
        hidden_states, attentions = ([x] if output_hidden_states else []), []
        for layer in self.vision_layers:
            if output_attentions:
                x, probs = layer(x, return_attention=True)
                attentions.append(probs)
            else:
                x = layer(x)
            if output_hidden_states:
                hidden_states.append(x)
        embeddings = self.neck(x)
        if output_hidden_states or output_attentions:
            return embeddings, tuple(hidden_states), tuple(attentions)
        return embeddings

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config
