"""SAM's mask decoder: output tokens, two-way transformer, upscaler and heads."""

import keras
from keras import layers, ops

from tf_sam.modeling.common import SamFeedForward, SamLayerNorm, gelu
from tf_sam.modeling.transformer import SamTwoWayTransformer


def _sub_pixel_matmul(x, conv):
    """A kernel-2, stride-2 `Conv2DTranspose` as one matmul over flattened cells.

    `x (N, C_in)` -> `(N, 4 * C_out)`: each cell's 2x2 output patch, row-major `(dy, dx)`,
    channels last. The patches do not overlap, so this is the same sum as the transposed
    conv without its scatter into the bigger map; the bias (and a GELU after it) then fuse
    into the matmul on oneDNN CPUs, and the runtime sees a plain fully-connected layer.
    """
    kernel = ops.cast(conv.kernel, x.dtype)  # (2, 2, C_out, C_in)
    kh, kw, out, cin = kernel.shape
    # Transposed in the matmul, not as an op of its own: oneDNN's transpose has a fixed
    # cost of ~30-50 us, whatever the size.
    weights_t = ops.reshape(kernel, (kh * kw * out, cin))
    # `ops.add`, not `+`: grappler fuses a GELU after it into the matmul only in this form.
    return ops.add(ops.matmul(x, ops.transpose(weights_t)), ops.tile(ops.cast(conv.bias, x.dtype), (kh * kw,)))


def _raster_order(masks, height, width):
    """`(B, P, M, h*w*16)` in sub-pixel order `(y, x, dy1, dx1, dy2, dx2)` ->
    `(B, P, M, 4h, 4w)` with row `4y + 2dy1 + dy2`, column `4x + 2dx1 + dx2`.

    Two transposes of rank <= 5, which TFLite's TRANSPOSE accepts.
    """
    shape = ops.shape(masks)
    m = ops.transpose(ops.reshape(masks, (-1, width, 2, 2, 4)), (0, 2, 1, 3, 4))  # (.., dy1, x, dx1, dy2*dx2)
    m = ops.transpose(ops.reshape(m, (-1, 2 * width, 2, 2)), (0, 2, 1, 3))  # (.., dy2, (x, dx1), dx2)
    return ops.reshape(m, (shape[0], shape[1], shape[2], 4 * height, 4 * width))


@keras.saving.register_keras_serializable(package="tf_sam")
class SamMaskDecoder(layers.Layer):
    """Predicts masks and IoU scores from image and prompt embeddings.

    Args (call):
        image_embeddings: `(B, h, w, C)`.
        image_pe: `(h, w, C)` dense positional encoding of the grid.
        sparse_embeddings: `(B, P, T, C)` or None (no point/box prompt).
        dense_embeddings: `(B or 1, h, w, C)`, or `(1, 1, 1, C)` (one embedding everywhere).
        multimask_output: return the 3 multimask outputs instead of the single one;
            "all" returns every token's mask (single-mask token first).
        attention_similarity, target_embedding: optional PerSAM inputs.
        image_projections: `project_image(image_embeddings, image_pe, dense_embeddings)`,
            to reuse it across calls for one image.
    Returns: `masks (B, P, M, 4h, 4w)`, `iou_pred (B, P, M)` and the per-block
    image updates of the two-way transformer (HF's `mask_decoder_attentions`).
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        from tf_sam.config import SamMaskDecoderConfig

        if isinstance(config, dict):
            config = SamMaskDecoderConfig.from_dict(config)
        self.config = config
        c = config
        self.num_mask_tokens = c.num_multimask_outputs + 1
        self.transformer = SamTwoWayTransformer(c, name="transformer")
        self.upscale_conv1 = layers.Conv2DTranspose(c.hidden_size // 4, 2, strides=2, name="upscale_conv1")
        self.upscale_layer_norm = SamLayerNorm(epsilon=1e-6, name="upscale_layer_norm")
        self.upscale_conv2 = layers.Conv2DTranspose(c.hidden_size // 8, 2, strides=2, name="upscale_conv2")
        self.output_hypernetworks_mlps = [
            SamFeedForward(c.hidden_size, c.hidden_size, c.hidden_size // 8, 3, name=f"output_hypernetworks_mlps_{i}")
            for i in range(self.num_mask_tokens)
        ]
        self.iou_prediction_head = SamFeedForward(
            c.hidden_size, c.iou_head_hidden_dim, self.num_mask_tokens, c.iou_head_depth, name="iou_prediction_head"
        )

    def build(self, input_shape=None):
        c = self.config
        self.iou_token = self.add_weight(shape=(1, c.hidden_size), initializer="random_normal", name="iou_token")
        self.mask_tokens = self.add_weight(
            shape=(self.num_mask_tokens, c.hidden_size), initializer="random_normal", name="mask_tokens"
        )
        self.transformer.build()
        self.upscale_conv1.build((None, None, None, c.hidden_size))
        self.upscale_layer_norm.build((None, None, None, c.hidden_size // 4))
        self.upscale_conv2.build((None, None, None, c.hidden_size // 4))
        for mlp in self.output_hypernetworks_mlps:
            mlp.build((None, c.hidden_size))
        self.iou_prediction_head.build((None, c.hidden_size))

    def _image_tokens(self, image_embeddings, image_pe, dense_embeddings):
        """`(B, h, w, C)` image + dense prompt and `(h, w, C)` PE -> `(B, hw, C)`, `(1, hw, C)`."""
        height, width, channels = image_embeddings.shape[1], image_embeddings.shape[2], self.config.hidden_size
        # One image per batch entry, not one copy per prompt: the transformer projects it
        # once and only the image->token updates make it per-prompt (HF copies it P times).
        src = image_embeddings + ops.cast(dense_embeddings, image_embeddings.dtype)
        src = ops.reshape(src, (-1, height * width, channels))
        pos = ops.reshape(ops.cast(image_pe, image_embeddings.dtype), (1, height * width, channels))
        return src, pos

    def project_image(self, image_embeddings, image_pe, dense_embeddings):
        """The decoder's work that depends on the image but on no point or box prompt.

        Shapes as in `call`. Returns a tuple of tensors to pass as `call(...,
        image_projections=...)` with these same three inputs (see
        `SamTwoWayTransformer.project_image`).
        """
        return self.transformer.project_image(*self._image_tokens(image_embeddings, image_pe, dense_embeddings))

    def call(self, image_embeddings, image_pe, sparse_embeddings, dense_embeddings,
             multimask_output=True, attention_similarity=None, target_embedding=None, image_projections=None):
        c = self.config
        batch = ops.shape(image_embeddings)[0]
        height, width = image_embeddings.shape[1], image_embeddings.shape[2]
        dtype = image_embeddings.dtype

        output_tokens = ops.cast(ops.concatenate([self.iou_token, self.mask_tokens], axis=0), dtype)
        if sparse_embeddings is None:
            prompts = 1
            tokens = ops.broadcast_to(output_tokens[None, None], (batch, 1) + tuple(output_tokens.shape))
        else:
            prompts = ops.shape(sparse_embeddings)[1]
            tokens = ops.broadcast_to(
                output_tokens[None, None], (batch, prompts) + tuple(output_tokens.shape)
            )
            tokens = ops.concatenate([tokens, ops.cast(sparse_embeddings, dtype)], axis=2)

        src, pos = self._image_tokens(image_embeddings, image_pe, dense_embeddings)
        queries, keys, updates = self.transformer(
            tokens, src, pos, attention_similarity, target_embedding, image_projections=image_projections
        )
        iou_token_out = queries[:, :, 0, :]
        mask_tokens_out = queries[:, :, 1 : 1 + self.num_mask_tokens, :]

        if not self.transformer.blocks:  # the image never became per-prompt; give each prompt a copy
            keys = ops.broadcast_to(keys, (batch, prompts, height * width, c.hidden_size))
        # Both transposed convs run as matmuls on flattened cells and the 4x4 sub-pixels stay
        # in the row order (y, x, dy1, dx1, dy2, dx2) until the masks, 8x smaller than the
        # upscaled features, are put in raster order.
        up = _sub_pixel_matmul(ops.reshape(keys, (-1, c.hidden_size)), self.upscale_conv1)
        up = gelu(self.upscale_layer_norm(ops.reshape(up, (-1, c.hidden_size // 4))))
        up = gelu(_sub_pixel_matmul(up, self.upscale_conv2), after_matmul=True)
        up = ops.reshape(up, (batch, prompts, height * width * 16, c.hidden_size // 8))

        iou_pred = self.iou_prediction_head(iou_token_out)
        keep = slice(None)  # "all": every mask token, single-mask token first
        if not (isinstance(multimask_output, str) and multimask_output == "all"):
            keep = slice(1, None) if multimask_output else slice(0, 1)
        hyper_in = ops.stack(
            [mlp(mask_tokens_out[:, :, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=2
        )[:, :, keep]  # (B, P, M, C/8)
        iou_pred = iou_pred[:, :, keep]
        masks = _raster_order(ops.matmul(hyper_in, ops.transpose(up, (0, 1, 3, 2))), height, width)
        # HF reports each block's image update as (B*P, 1, HW, C).
        updates = tuple(ops.reshape(u, (-1, 1, height * width, c.hidden_size)) for u in updates)
        return masks, iou_pred, updates

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config
