"""``type:`` → provider class. Unknown types are rejected when the policy file loads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field

from app.providers.base import AnyProvider
from app.providers.databrain import DatabrainConfig, DatabrainProvider
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider
from app.providers.metabase import MetabaseConfig, MetabaseProvider
from app.providers.superset import PresetConfig, PresetProvider, SupersetConfig, SupersetProvider

PROVIDER_TYPES: Mapping[str, type[AnyProvider]] = {
    EmbeddableProvider.type_name: EmbeddableProvider,
    DatabrainProvider.type_name: DatabrainProvider,
    MetabaseProvider.type_name: MetabaseProvider,
    SupersetProvider.type_name: SupersetProvider,
    PresetProvider.type_name: PresetProvider,
}

# The policy file's providers.<name> block: pydantic picks the model by `type` and
# reports an unknown type with the list of known ones.
ProviderConfig = Annotated[
    EmbeddableConfig | DatabrainConfig | MetabaseConfig | SupersetConfig | PresetConfig,
    Field(discriminator="type"),
]


def provider_class(type_name: str) -> type[AnyProvider]:
    try:
        return PROVIDER_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ValueError(f"unknown provider type {type_name!r} (known: {known})") from None
