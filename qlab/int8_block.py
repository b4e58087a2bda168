"""A timm ViT ``Block`` whose two skip connections are added inside the int8 kernels (issue 15, notebook 12).

timm's block computes ``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``: two float32 passes over the tokens
after the linears that produced ``attn(...)`` and ``mlp(...)``. ``int8_linear_packed(..., residual=x)`` adds ``x`` in
its epilogue instead, the same single float32 add per element (``y + x`` and ``x + y`` are the same bits), so
:class:`Int8Block` hands ``x`` to ``attn.proj`` (:class:`~qlab.attention.Int8Attention`) and to ``mlp.fc2``
(:class:`~qlab.int8_mlp.Int8Mlp`). :func:`qlab.vit.quantize_vit` uses it for every block it can (``fuse_residual``).
"""

from __future__ import annotations

from torch import nn

__all__ = ["Int8Block", "supported_block"]


def supported_block(block: nn.Module) -> bool:
    """A timm ``Block`` whose skip connections :class:`Int8Block` can add in the int8 epilogues: no LayerScale, no
    drop path (both identities), an attention module that takes ``residual``."""
    from timm.models.vision_transformer import Block

    return (
        type(block) is Block
        and all(isinstance(getattr(block, n), nn.Identity) for n in ("ls1", "ls2", "drop_path1", "drop_path2"))
        and getattr(block.attn, "fuses_residual", False)
    )


class Int8Block(nn.Module):
    """A timm ``Block`` (``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``) with each skip connection
    added in the epilogue of the int8 linear before it: ``attn.proj`` and, when the MLP is an
    :class:`~qlab.int8_mlp.Int8Mlp`, ``mlp.fc2`` compute ``y + x`` in their last pass (the same float32 add,
    so the same bits as timm's ``x + y``) instead of a separate pass over the tokens."""

    def __init__(self, block: nn.Module):
        super().__init__()
        if not supported_block(block):
            raise TypeError(
                "block must be a timm Block with identity ls1/ls2/drop_path1/drop_path2 and an int8 attention that "
                f"takes residual (Int8Attention), got {type(block).__name__}"
            )
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp

    def forward(self, x, attn_mask=None, is_causal=False):
        x = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, residual=x)
        if getattr(self.mlp, "fuses_residual", False):
            return self.mlp(self.norm2(x), residual=x)
        return x + self.mlp(self.norm2(x))
