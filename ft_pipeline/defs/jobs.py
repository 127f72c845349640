import dagster as dg

from ft_pipeline.defs.partitions import drops

ingest_drop_job = dg.define_asset_job(
    "ingest_drop", selection=dg.AssetSelection.assets("raw_examples", "cleaned_examples"), partitions_def=drops,
    description="Parse, canonicalize and clean one raw drop (one partition).")

ingest_preferences_job = dg.define_asset_job(
    "ingest_preferences", selection=dg.AssetSelection.assets("preference_pairs"),
    description="Read every preference drop (the raw folder's preferences/) into train and holdout pairs.")

train_and_register_job = dg.define_asset_job(
    "train_and_register",
    selection=dg.AssetSelection.assets("train_set", "holdout_set", "base_model", "lora_adapter",
                                       "preference_pairs", "preference_adapter", "evaluation_report",
                                       "registered_model", "merged_model", "gguf_model"),
    description="Split all cleaned drops, train the adapter (then DPO on preference pairs, if any), evaluate it and "
                "register it if it passes the gate.",
    tags={"ft_pipeline/gpu": "true"})
