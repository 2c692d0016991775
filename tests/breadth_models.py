"""Public model code of the shapes fc2conv meets in the wild, written as their authors wrote it (tests/test_breadth.py).

- kuangliu/pytorch-cifar's ShuffleNet and ShuffleNetV2: a channel shuffle that unpacks `N, C, H, W = x.size()` and
  views by `C // g` or `int(C / g)`, a split at `int(x.size(1) * ratio)`, a fixed `F.avg_pool2d(out, 4)` head;
- weiaicunzai/pytorch-cifar100's NASNet-A: cells fed `(x, prev)` tuples whose `Fit` branches on
  `x.size(2) != prev.size(2)` (a reduction happened) and on `prev.size(1) != self.filters`;
- torchaudio's speech-commands tutorial M5: `F.avg_pool1d(x, x.shape[-1])`, `permute(0, 2, 1)`, a Linear over the
  channels, then `squeeze(1)` or a log-softmax over the last axis;
- a ConvNeXt-style head written by hand: `permute` → `LayerNorm` → `Linear` → `permute` back.

Sizes are shrunk so the tests run in seconds; the code paths are the originals'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# -- kuangliu/pytorch-cifar models/shufflenet.py (mid_planes with //: the original's `/` fails in Python 3)


class ShuffleBlock(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        """Channel shuffle: [N,C,H,W] -> [N,g,C/g,H,W] -> [N,C/g,g,H,w] -> [N,C,H,W]"""
        N, C, H, W = x.size()
        g = self.groups
        return x.view(N, g, C // g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)


class ShuffleBottleneck(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = F.relu(torch.cat([out, res], 1)) if self.stride == 2 else F.relu(out + res)
        return out


class ShuffleNet(nn.Module):
    def __init__(self, out_planes=(48, 96, 192), num_blocks=(2, 2, 1), groups=2, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes, num_blocks, groups):
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(ShuffleBottleneck(self.in_planes, out_planes - cat_planes, stride=stride, groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


# -- kuangliu/pytorch-cifar models/shufflenetv2.py


class ShuffleBlockV2(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        N, C, H, W = x.size()
        g = self.groups
        return x.view(N, g, int(C / g), H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)


class SplitBlock(nn.Module):
    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlockV2(nn.Module):
    def __init__(self, in_channels, split_ratio=0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, groups=in_channels,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlockV2()

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        out = torch.cat([x1, out], 1)
        out = self.shuffle(out)
        return out


class DownBlockV2(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1, groups=mid_channels,
                               bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlockV2()

    def forward(self, x):
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        out = torch.cat([out1, out2], 1)
        out = self.shuffle(out)
        return out


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels=(24, 48, 96, 128), num_blocks=(1, 2, 1), num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels, num_blocks):
        layers = [DownBlockV2(self.in_channels, out_channels)]
        for _ in range(num_blocks):
            layers.append(BasicBlockV2(out_channels))
            self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


# -- weiaicunzai/pytorch-cifar100 models/nasnet.py


class SeperableConv2d(nn.Module):
    def __init__(self, input_channels, output_channels, kernel_size, **kwargs):
        super().__init__()
        self.depthwise = nn.Conv2d(input_channels, input_channels, kernel_size, groups=input_channels, **kwargs)
        self.pointwise = nn.Conv2d(input_channels, output_channels, 1)

    def forward(self, x):
        x = self.depthwise(x)
        x = self.pointwise(x)
        return x


class SeperableBranch(nn.Module):
    def __init__(self, input_channels, output_channels, kernel_size, **kwargs):
        super().__init__()
        self.block1 = nn.Sequential(nn.ReLU(), SeperableConv2d(input_channels, output_channels, kernel_size, **kwargs),
                                    nn.BatchNorm2d(output_channels))
        self.block2 = nn.Sequential(nn.ReLU(), SeperableConv2d(output_channels, output_channels, kernel_size, stride=1,
                                                               padding=int(kernel_size / 2)),
                                    nn.BatchNorm2d(output_channels))

    def forward(self, x):
        x = self.block1(x)
        x = self.block2(x)
        return x


class Fit(nn.Module):
    """Make the cell outputs compatible."""

    def __init__(self, prev_filters, filters):
        super().__init__()
        self.relu = nn.ReLU()
        self.p1 = nn.Sequential(nn.AvgPool2d(1, stride=2), nn.Conv2d(prev_filters, int(filters / 2), 1))
        self.p2 = nn.Sequential(nn.ConstantPad2d((0, 1, 0, 1), 0), nn.ConstantPad2d((-1, 0, -1, 0), 0),
                                nn.AvgPool2d(1, stride=2), nn.Conv2d(prev_filters, int(filters / 2), 1))
        self.bn = nn.BatchNorm2d(filters)
        self.dim_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(prev_filters, filters, 1), nn.BatchNorm2d(filters))
        self.filters = filters

    def forward(self, inputs):
        x, prev = inputs
        if prev is None:
            return x
        # image size does not match
        elif x.size(2) != prev.size(2):
            prev = self.relu(prev)
            p1 = self.p1(prev)
            p2 = self.p2(prev)
            prev = torch.cat([p1, p2], 1)
            prev = self.bn(prev)
        elif prev.size(1) != self.filters:
            prev = self.dim_reduce(prev)
        return prev


class NormalCell(nn.Module):
    def __init__(self, x_in, prev_in, output_channels):
        super().__init__()
        self.dem_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(x_in, output_channels, 1, bias=False),
                                        nn.BatchNorm2d(output_channels))
        self.block1_left = SeperableBranch(output_channels, output_channels, kernel_size=3, padding=1, bias=False)
        self.block1_right = nn.Sequential()
        self.block2_left = SeperableBranch(output_channels, output_channels, kernel_size=3, padding=1, bias=False)
        self.block2_right = SeperableBranch(output_channels, output_channels, kernel_size=5, padding=2, bias=False)
        self.block3_left = nn.AvgPool2d(3, stride=1, padding=1)
        self.block3_right = nn.Sequential()
        self.block4_left = nn.AvgPool2d(3, stride=1, padding=1)
        self.block4_right = nn.AvgPool2d(3, stride=1, padding=1)
        self.block5_left = SeperableBranch(output_channels, output_channels, kernel_size=5, padding=2, bias=False)
        self.block5_right = SeperableBranch(output_channels, output_channels, kernel_size=3, padding=1, bias=False)
        self.fit = Fit(prev_in, output_channels)

    def forward(self, x):
        x, prev = x
        prev = self.fit((x, prev))
        h = self.dem_reduce(x)
        x1 = self.block1_left(h) + self.block1_right(h)
        x2 = self.block2_left(prev) + self.block2_right(h)
        x3 = self.block3_left(h) + self.block3_right(h)
        x4 = self.block4_left(prev) + self.block4_right(prev)
        x5 = self.block5_left(prev) + self.block5_right(prev)
        return torch.cat([prev, x1, x2, x3, x4, x5], 1), x


class ReductionCell(nn.Module):
    def __init__(self, x_in, prev_in, output_channels):
        super().__init__()
        self.dim_reduce = nn.Sequential(nn.ReLU(), nn.Conv2d(x_in, output_channels, 1),
                                        nn.BatchNorm2d(output_channels))
        self.layer1block1_left = SeperableBranch(output_channels, output_channels, 7, stride=2, padding=3)
        self.layer1block1_right = SeperableBranch(output_channels, output_channels, 5, stride=2, padding=2)
        self.layer1block2_left = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1block2_right = SeperableBranch(output_channels, output_channels, 7, stride=2, padding=3)
        self.layer1block3_left = nn.AvgPool2d(3, 2, 1)
        self.layer1block3_right = SeperableBranch(output_channels, output_channels, 5, stride=2, padding=2)
        self.layer2block1_left = nn.MaxPool2d(3, 2, 1)
        self.layer2block1_right = SeperableBranch(output_channels, output_channels, 3, stride=1, padding=1)
        self.layer2block2_left = nn.AvgPool2d(3, 1, 1)
        self.layer2block2_right = nn.Sequential()
        self.fit = Fit(prev_in, output_channels)

    def forward(self, x):
        x, prev = x
        prev = self.fit((x, prev))
        h = self.dim_reduce(x)
        layer1block1 = self.layer1block1_left(prev) + self.layer1block1_right(h)
        layer1block2 = self.layer1block2_left(h) + self.layer1block2_right(prev)
        layer1block3 = self.layer1block3_left(h) + self.layer1block3_right(prev)
        layer2block1 = self.layer2block1_left(h) + self.layer2block1_right(layer1block1)
        layer2block2 = self.layer2block2_left(layer1block1) + self.layer2block2_right(layer1block2)
        return torch.cat([layer1block2, layer1block3, layer2block1, layer2block2], 1), x


class NasNetA(nn.Module):
    def __init__(self, repeat_cell_num=1, reduction_num=2, filters=8, stemfilter=8, class_num=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stemfilter, 3, padding=1, bias=False), nn.BatchNorm2d(stemfilter))
        self.prev_filters = stemfilter
        self.x_filters = stemfilter
        self.filters = filters
        self.cell_layers = self._make_layers(repeat_cell_num, reduction_num)
        self.relu = nn.ReLU()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.filters * 6, class_num)

    def _make_normal(self, block, repeat, output):
        layers = []
        for _ in range(repeat):
            layers.append(block(self.x_filters, self.prev_filters, output))
            self.prev_filters = self.x_filters
            self.x_filters = output * 6  # concatenate 6 branches
        return layers

    def _make_reduction(self, block, output):
        reduction = block(self.x_filters, self.prev_filters, output)
        self.prev_filters = self.x_filters
        self.x_filters = output * 4  # stack for 4 branches
        return reduction

    def _make_layers(self, repeat_cell_num, reduction_num):
        layers = []
        for _ in range(reduction_num):
            layers.extend(self._make_normal(NormalCell, repeat_cell_num, self.filters))
            self.filters *= 2
            layers.append(self._make_reduction(ReductionCell, self.filters))
        layers.extend(self._make_normal(NormalCell, repeat_cell_num, self.filters))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.stem(x)
        prev = None
        x, prev = self.cell_layers((x, prev))
        x = self.relu(x)
        x = self.avg(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


# -- torchaudio's speech-commands tutorial M5, and the variants of its head


class M5(nn.Module):
    def __init__(self, n_input=1, n_output=35, stride=16, n_channel=32, head="squeeze"):
        super().__init__()
        self.head = head
        self.conv1 = nn.Conv1d(n_input, n_channel, kernel_size=80, stride=stride)
        self.bn1 = nn.BatchNorm1d(n_channel)
        self.pool1 = nn.MaxPool1d(4)
        self.conv2 = nn.Conv1d(n_channel, n_channel, kernel_size=3)
        self.bn2 = nn.BatchNorm1d(n_channel)
        self.pool2 = nn.MaxPool1d(4)
        self.conv3 = nn.Conv1d(n_channel, 2 * n_channel, kernel_size=3)
        self.bn3 = nn.BatchNorm1d(2 * n_channel)
        self.pool3 = nn.MaxPool1d(4)
        self.conv4 = nn.Conv1d(2 * n_channel, 2 * n_channel, kernel_size=3)
        self.bn4 = nn.BatchNorm1d(2 * n_channel)
        self.pool4 = nn.MaxPool1d(4)
        self.fc1 = nn.Linear(2 * n_channel, n_output)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x))
        x = self.pool1(x)
        x = self.conv2(x)
        x = F.relu(self.bn2(x))
        x = self.pool2(x)
        x = self.conv3(x)
        x = F.relu(self.bn3(x))
        x = self.pool3(x)
        x = self.conv4(x)
        x = F.relu(self.bn4(x))
        x = self.pool4(x)
        x = F.avg_pool1d(x, x.shape[-1])
        x = x.permute(0, 2, 1)
        x = self.fc1(x)
        if self.head == "squeeze":
            return x.squeeze(1)
        if self.head == "squeeze log_softmax":
            return F.log_softmax(x.squeeze(1), dim=-1)
        return F.log_softmax(x, dim=2)  # the tutorial's own: N×1×K


class ChannelsLastHead(nn.Module):
    """A ConvNeXt-style head written by hand: the pooled map moved channels-last for LayerNorm and Linear."""

    def __init__(self, back: str = "permute"):
        super().__init__()
        self.back = back
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1))
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, 7)

    def forward(self, x):
        x = self.features(x).mean((2, 3), keepdim=True)  # N×C×1×1
        x = x.permute(0, 2, 3, 1)  # N×1×1×C
        x = self.head(self.norm(x))
        if self.back == "permute":
            return x.permute(0, 3, 1, 2).flatten(1)
        return x.flatten(1)  # N×K straight from N×1×1×K


class PerPositionLinear(nn.Module):
    """A Linear over the channels of the permuted conv map at every position (a 1×1 convolution), then a pool over
    the positions with the channels still last: `permute` → `Linear` → `mean` (or `amax`) over the positions."""

    def __init__(self, pool: str = "mean", spatial: int = 2):
        super().__init__()
        self.pool, self.spatial = pool, spatial
        conv = nn.Conv2d if spatial == 2 else nn.Conv1d
        self.features = nn.Sequential(conv(3, 16, 3, stride=2, padding=1), nn.ReLU(), conv(16, 24, 3, stride=2))
        self.norm, self.fc = nn.LayerNorm(24), nn.Linear(24, 5)

    def forward(self, x):
        x = self.features(x)
        x = x.permute(0, 2, 3, 1) if self.spatial == 2 else x.transpose(1, 2)
        x = self.fc(F.gelu(self.norm(x)))
        positions = (1, 2) if self.spatial == 2 else 1
        return x.mean(positions) if self.pool == "mean" else x.amax(positions)
