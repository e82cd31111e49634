"""SAM's prompt encoder: random-Fourier positions, point/box/mask embeddings."""

import math

import keras
from keras import layers, ops

from tf_sam.modeling.common import SamLayerNorm, get_activation

# HF's label for a padding point: it contributes nothing to the sparse embedding.
PAD_LABEL = -10


@keras.saving.register_keras_serializable(package="tf_sam")
class SamPositionalEmbedding(layers.Layer):
    """Random-Fourier positional encoding shared by the prompt encoder and decoder.

    Shapes: coordinates `(..., 2)` in `[0, 1]` (x, y) -> `(..., 2 * num_pos_feats)`.
    """

    def __init__(self, num_pos_feats=128, **kwargs):
        super().__init__(**kwargs)
        self.num_pos_feats = num_pos_feats

    def build(self, input_shape=None):
        # Meta's unit-variance Gaussian: Keras's default std 0.05 maps every point in the image
        # to nearly the same code, so a model trained from scratch cannot tell clicks apart.
        self.positional_embedding = self.add_weight(
            shape=(2, self.num_pos_feats), initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="positional_embedding",
            trainable=False,
        )

    def call(self, coords):
        coords = 2.0 * ops.cast(coords, self.compute_dtype) - 1.0
        coords = ops.matmul(coords, ops.cast(self.positional_embedding, coords.dtype))
        coords = (2.0 * math.pi) * coords
        return ops.concatenate([ops.sin(coords), ops.cos(coords)], axis=-1)

    def image_wide(self, size):
        """Dense positional encoding of a `size x size` grid of cell centres: `(size, size, 2F)`."""
        centres = (ops.arange(size, dtype="float32") + 0.5) / size
        x = ops.broadcast_to(centres[None, :], (size, size))
        y = ops.broadcast_to(centres[:, None], (size, size))
        return self(ops.stack([x, y], axis=-1))

    def get_config(self):
        config = super().get_config()
        config.update(num_pos_feats=self.num_pos_feats)
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamMaskEmbedding(layers.Layer):
    """Downscales a mask prompt 4x to the embedding grid.

    Shapes: `(B, 4h, 4w, 1)` mask logits -> `(B, h, w, hidden_size)`.
    """

    def __init__(self, hidden_size, mask_input_channels=16, layer_norm_eps=1e-6, hidden_act="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.mask_input_channels = mask_input_channels
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self._act = get_activation(hidden_act)
        inner = mask_input_channels // 4
        self.conv1 = layers.Conv2D(inner, 2, strides=2, name="conv1")
        self.layer_norm1 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm1")
        self.conv2 = layers.Conv2D(mask_input_channels, 2, strides=2, name="conv2")
        self.layer_norm2 = SamLayerNorm(epsilon=layer_norm_eps, name="layer_norm2")
        self.conv3 = layers.Conv2D(hidden_size, 1, name="conv3")

    def build(self, input_shape):
        b, h, w = input_shape[0], input_shape[1], input_shape[2]
        half = (b, None if h is None else h // 2, None if w is None else w // 2)
        quarter = (b, None if h is None else h // 4, None if w is None else w // 4)
        self.conv1.build(input_shape)
        self.layer_norm1.build(half + (self.mask_input_channels // 4,))
        self.conv2.build(half + (self.mask_input_channels // 4,))
        self.layer_norm2.build(quarter + (self.mask_input_channels,))
        self.conv3.build(quarter + (self.mask_input_channels,))

    def call(self, masks):
        x = self._act(self.layer_norm1(self.conv1(masks)))
        x = self._act(self.layer_norm2(self.conv2(x)))
        return self.conv3(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size, mask_input_channels=self.mask_input_channels,
            layer_norm_eps=self.layer_norm_eps, hidden_act=self.hidden_act,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sam")
class SamPromptEncoder(layers.Layer):
    """Embeds points, boxes and masks.

    Args:
        config: `SamPromptEncoderConfig` (or dict).
        shared_embedding: the `SamPositionalEmbedding` shared with the mask decoder;
            a new one is made when omitted.

    Point labels follow HF: 1 foreground, 0 background, -1 not-a-point, -10 padding;
    labels 2 and 3 (box corners, as in Meta's ONNX export) add their corner embeddings.
    """

    def __init__(self, config, shared_embedding=None, **kwargs):
        super().__init__(**kwargs)
        from tf_sam.config import SamPromptEncoderConfig

        if isinstance(config, dict):
            config = SamPromptEncoderConfig.from_dict(config)
        self.config = config
        # Standalone (e.g. deserialised alone) the encoder owns its positional encoding.
        self.shared_embedding = shared_embedding or SamPositionalEmbedding(
            config.hidden_size // 2, name="shared_embedding"
        )
        self.mask_embed = SamMaskEmbedding(
            config.hidden_size, config.mask_input_channels, config.layer_norm_eps, config.hidden_act,
            name="mask_embed",
        )

    def build(self, input_shape=None):
        c = self.config
        emb = lambda name: self.add_weight(shape=(1, c.hidden_size), initializer="random_normal", name=name)
        self.no_mask_embed = emb("no_mask_embed")
        self.not_a_point_embed = emb("not_a_point_embed")
        self.point_embed = [emb(f"point_embed_{i}") for i in range(c.num_point_embeddings)]
        if not self.shared_embedding.built:
            self.shared_embedding.build()
        mask = 4 * c.image_embedding_size
        self.mask_embed.build((None, mask, mask, 1))

    def embed_points(self, points, labels, pad):
        """Sparse embeddings of points.

        Args:
            points: `(B, P, N, 2)` xy in the model's input frame (pixels of the resized image).
            labels: `(B, P, N)` int labels.
            pad: append HF's not-a-point (used when no box follows the points).
        Returns: `(B, P, N (+1), hidden_size)`.
        """
        points = ops.cast(points, self.compute_dtype) + 0.5  # pixel centres
        labels = ops.cast(labels, "int32")
        if pad:
            zeros = ops.zeros_like(points[:, :, :1, :])
            points = ops.concatenate([points, zeros], axis=2)
            labels = ops.concatenate([labels, -ops.ones_like(labels[:, :, :1])], axis=2)
        embedding = self.shared_embedding(points / float(self.config.image_size))
        labels = ops.expand_dims(labels, -1)
        embedding = ops.where(labels == -1, ops.cast(self.not_a_point_embed, embedding.dtype), embedding)
        embedding = ops.where(labels == PAD_LABEL, ops.zeros_like(embedding), embedding)
        for i, weight in enumerate(self.point_embed):
            embedding = embedding + ops.cast(labels == i, embedding.dtype) * ops.cast(weight, embedding.dtype)
        return embedding

    def embed_boxes(self, boxes):
        """Sparse embeddings of boxes: `(B, nb, 4)` xyxy -> `(B, nb, 2, hidden_size)`."""
        boxes = ops.cast(boxes, self.compute_dtype) + 0.5
        corners = ops.reshape(boxes, (ops.shape(boxes)[0], ops.shape(boxes)[1], 2, 2))
        embedding = self.shared_embedding(corners / float(self.config.image_size))
        corner_embed = ops.concatenate([self.point_embed[2], self.point_embed[3]], axis=0)
        return embedding + ops.cast(corner_embed, embedding.dtype)

    def call(self, input_points=None, input_labels=None, input_boxes=None, input_masks=None, batch_size=1,
             broadcast_dense=True):
        """Returns `(sparse (B, P, T, C) or None, dense (B, h, w, C))`.

        `input_masks` is `(B, 4h, 4w)` (or with a trailing channel of 1). With
        `broadcast_dense=False` and no masks, dense is the no-mask embedding as `(1, 1, 1, C)`:
        adding it to the image embeddings broadcasts the same, without writing out the
        `(B, h, w, C)` copy (0.3 ms of a ViT-B decode).
        """
        sparse = None
        if input_points is not None:
            batch_size = ops.shape(input_points)[0]
            sparse = self.embed_points(input_points, input_labels, pad=input_boxes is None)
        if input_boxes is not None:
            batch_size = ops.shape(input_boxes)[0]
            boxes = self.embed_boxes(input_boxes)
            sparse = boxes if sparse is None else ops.concatenate([sparse, boxes], axis=2)
        size = self.config.image_embedding_size
        if input_masks is not None:
            if len(input_masks.shape) == 3:
                input_masks = ops.expand_dims(input_masks, -1)
            dense = self.mask_embed(ops.cast(input_masks, self.compute_dtype))
        else:
            dense = ops.reshape(ops.cast(self.no_mask_embed, self.compute_dtype), (1, 1, 1, -1))
            if broadcast_dense:
                dense = ops.broadcast_to(dense, (batch_size, size, size, self.config.hidden_size))
        return sparse, dense

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.to_dict())
        return config
