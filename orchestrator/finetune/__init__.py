"""bertctl finetune: classification, token classification and extractive QA from a pretrained checkpoint or an export; ONNX export."""
