"""Federated fine-tuning across unlike devices, on Flower's deployment runtime (SuperLink + SuperNodes).

FedPipe (heterogeneous-rank LoRA on the important matrices, per-device rank/batch/precision from an integer
program) and FlocOff (devices offload data to edge servers so each server's label mix is close to the
global one, then bandwidth and power are allocated), with FedAvg, homogeneous LoRA and FedProx as baselines.
"""
