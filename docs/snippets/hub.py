# torch.hub from a local checkout: every registered model is an entry point.
import torch

model = torch.hub.load(".", "resnet56_cifar", source="local")  # CIFAR-10 classifier
backbone = torch.hub.load(  # num_classes, out_features, norm: create_model arguments
    ".", "resnet50", source="local", num_classes=None, out_features=["res4"], norm="FrozenBN"
)
# weights="resnet50-0676ba61.pth" would load a torchvision (or MSRA / detectron2 / our) checkpoint.
print(model(torch.zeros(1, 3, 32, 32)).shape, backbone(torch.zeros(1, 3, 64, 64))["res4"].shape)
